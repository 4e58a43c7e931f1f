//! The one seam through which tests break the trainer on purpose; inert unless a test arms it.
//!
//! - Crash points for the kill tests: `MOCO_TEST_KILL_AT=partial|synced|renamed` makes the
//!   process SIGKILL itself at that stage of its first checkpoint write; `step:N` at the start of
//!   step N (the distributed tests kill one rank that way). External kills land at random
//!   moments, mostly during steps; this is how the tests reach the narrow windows inside a
//!   checkpoint write every time.
//! - Planted faults for the parity tests, which must show that their comparison catches a wrong
//!   algorithm: [`plant`] arms one on the calling thread for as long as its guard lives, and the
//!   methods ask [`planted`] at the few places where a fault is planted.

use std::cell::Cell;

use atomic_io::WriteStage;

pub const ENV: &str = "MOCO_TEST_KILL_AT";

/// The variable, read once (`at_step` runs every training step).
fn wanted() -> Option<&'static str> {
    static WANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WANT.get_or_init(|| std::env::var(ENV).ok()).as_deref()
}

fn parse(s: &str) -> Option<WriteStage> {
    match s {
        "partial" => Some(WriteStage::Partial),
        "synced" => Some(WriteStage::Synced),
        "renamed" => Some(WriteStage::Renamed),
        _ => None,
    }
}

fn kill(why: &str) {
    eprintln!("{ENV}: SIGKILL {why}");
    // SAFETY: raise has no preconditions; SIGKILL ends the process here, skipping every
    // destructor and buffered write, as an outside kill would.
    unsafe {
        libc::raise(libc::SIGKILL);
    }
}

/// Called at the start of each training step (0-based).
pub fn at_step(step: u64) {
    if let Some(want) = wanted() {
        if want.strip_prefix("step:").and_then(|s| s.parse().ok()) == Some(step) {
            kill(&format!("at the start of step {step}"));
        }
    }
}

/// Called at each stage of a checkpoint write.
pub fn at_checkpoint_stage(stage: WriteStage, step: u64) {
    let Some(want) = wanted() else {
        return;
    };
    if parse(want) == Some(stage) {
        kill(&format!("during the step-{step} checkpoint write ({want})"));
    }
}

/// A wrong algorithm that a parity test must catch, named where it is planted (each module
/// declares its own as constants, so that a new method adds its faults in its own file).
pub type Fault = &'static str;

thread_local! {
    static ARMED: Cell<Option<Fault>> = const { Cell::new(None) };
}

/// Disarms its fault when dropped.
pub struct Planted(());

impl Drop for Planted {
    fn drop(&mut self) {
        ARMED.with(|a| a.set(None));
    }
}

/// Arms `fault` on this thread until the guard is dropped. For tests only.
#[doc(hidden)]
pub fn plant(fault: Fault) -> Planted {
    ARMED.with(|a| a.set(Some(fault)));
    Planted(())
}

/// Whether a test armed `fault` on this thread (never, outside tests).
pub fn planted(fault: Fault) -> bool {
    ARMED.with(|a| a.get() == Some(fault))
}
