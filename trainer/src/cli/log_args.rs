//! `--tensorboard DIR` / `--no-tensorboard`, shared by pretrain and linear.

use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct TensorboardArgs {
    /// TensorBoard event files (loss, lr, images/s, kNN or top-1/top-5 per logged step, and the
    /// run's figures as images). Default: OUT/tb.
    #[arg(long, conflicts_with = "no_tensorboard")]
    pub tensorboard: Option<PathBuf>,
    /// Write no TensorBoard files.
    #[arg(long)]
    pub no_tensorboard: bool,
}

impl TensorboardArgs {
    pub fn dir(&self, out: &Path) -> Option<PathBuf> {
        match (&self.tensorboard, self.no_tensorboard) {
            (_, true) => None,
            (Some(d), _) => Some(d.clone()),
            (None, false) => Some(out.join("tb")),
        }
    }
}
