//! Preemption. Schedulers send SIGTERM (SLURM: also a chosen signal such as SIGUSR1 with
//! `--signal=USR1@90`) some time before they kill a job. On the first SIGTERM, SIGINT or SIGUSR1
//! a long command finishes the step it is in, writes a checkpoint and exits with
//! [`PREEMPTED_EXIT`], so that a job script can requeue it; a second signal exits at once with
//! 128 + the signal's number, as a shell reports a process killed by it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

/// The exit status of a command stopped by a signal after saving its state: `EX_TEMPFAIL` of
/// sysexits.h ("try again later"), distinct from success (0), failure (1) and usage errors (2).
pub const PREEMPTED_EXIT: u8 = 75;

/// The signals that ask for a stop.
pub const SIGNALS: [i32; 3] = [SIGTERM, SIGINT, SIGUSR1];

/// Whether a stop was asked for, and by which signal; cloned into whatever polls it.
#[derive(Clone, Default)]
pub struct StopFlag {
    asked: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl StopFlag {
    /// A flag that only [`StopFlag::ask`] sets (library callers and tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag set by the first of [`SIGNALS`]; the second one ends the process at once.
    pub fn from_signals() -> std::io::Result<Self> {
        let flag = Self::new();
        for sig in SIGNALS {
            // The actions run in the order they were registered: the exit checks the flag
            // before the first signal sets it, so only a second signal exits.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.asked.clone())?;
            signal_hook::flag::register_usize(sig, flag.signal.clone(), sig as usize)?;
            signal_hook::flag::register(sig, flag.asked.clone())?;
        }
        Ok(flag)
    }

    pub fn ask(&self) {
        self.asked.store(true, Ordering::SeqCst);
    }

    pub fn asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// The signal's name, or "a stop request" when none set the flag.
    pub fn cause(&self) -> String {
        match self.signal.load(Ordering::SeqCst) as i32 {
            0 => "a stop request".into(),
            s => signal_name(s),
        }
    }
}

pub fn signal_name(sig: i32) -> String {
    match sig {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        SIGUSR1 => "SIGUSR1".into(),
        s => format!("signal {s}"),
    }
}

/// A command stopped by a signal after saving its state; `--resume` continues it.
#[derive(Debug)]
pub struct Preempted {
    pub cause: String,
    /// The step reached and the newest checkpoint; unknown to the `--nproc` launcher, whose
    /// rank 0 reports them.
    pub saved: Option<(u64, PathBuf)>,
}

impl std::fmt::Display for Preempted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", self.cause)?;
        if let Some((step, path)) = &self.saved {
            write!(f, " after step {step}; state saved in {}", path.display())?;
        }
        write!(
            f,
            "; run the same command with --resume to continue (exit status {PREEMPTED_EXIT})"
        )
    }
}

impl std::error::Error for Preempted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_remembers_the_request() {
        let f = StopFlag::new();
        assert!(!f.asked());
        f.clone().ask();
        assert!(f.asked());
        assert_eq!(f.cause(), "a stop request");
    }
}
