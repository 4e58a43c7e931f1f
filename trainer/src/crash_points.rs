//! Crash injection for the kill tests: `MOCO_TEST_KILL_AT=partial|synced|renamed` makes the
//! process SIGKILL itself at that stage of its first checkpoint write; `step:N` at the start of
//! step N (the distributed tests kill one rank that way). External kills land at
//! random moments, mostly during steps; this is how the tests reach the narrow windows inside a
//! checkpoint write every time. Unset (always, outside tests), it does nothing.

use models::weights::WriteStage;

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
