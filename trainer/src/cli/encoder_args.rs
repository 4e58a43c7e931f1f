//! `--encoder-prefix`, shared by every command that reads `--encoder`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use models::{Arch, EncoderFile};

use crate::nn::encoder::EncoderSource;

#[derive(clap::Args, Debug, Clone)]
pub struct EncoderPrefixArg {
    /// The backbone's prefix in the --encoder file's tensor names (`module.encoder_q.`,
    /// `backbone.`). Default: detected (the query/online encoder when the file also holds its
    /// momentum copy). --encoder also reads PyTorch files: MoCo's checkpoint_NNNN.pth.tar, a
    /// torchvision state_dict .pth/.pt, a Lightning .ckpt.
    #[arg(long)]
    pub encoder_prefix: Option<String>,
}

impl EncoderPrefixArg {
    pub fn file(&self, path: &Path) -> EncoderFile {
        EncoderFile::with_prefix(path, self.encoder_prefix.clone())
    }
}

/// `--encoder PATH [--encoder-prefix P] [--arch A]` or `--random-init --arch A`: the backbone of
/// the commands that also measure the random-init floor (knn, linear, label-study).
#[derive(clap::Args, Debug, Clone)]
pub struct EncoderSourceArgs {
    /// Backbone (`RUN/encoder.safetensors`, a pretraining checkpoint or a PyTorch file).
    #[arg(long, required_unless_present = "random_init")]
    pub encoder: Option<PathBuf>,
    #[command(flatten)]
    pub prefix: EncoderPrefixArg,
    /// torchvision's random initialisation instead (the floor); needs --arch.
    #[arg(long, requires = "arch")]
    pub random_init: bool,
    /// The architecture of the random init; with --encoder, the one the file must hold (checked).
    #[arg(long)]
    pub arch: Option<Arch>,
}

impl EncoderSourceArgs {
    /// The backbone; a random init is drawn from `seed`. With a file, `--arch` is what the user
    /// expects it to hold: checked when it is loaded.
    pub fn source(&self, seed: u64) -> Result<EncoderSource> {
        match (&self.encoder, self.arch) {
            (Some(p), expected) if !self.random_init => Ok(EncoderSource::Pretrained(
                self.prefix.file(p).expecting(expected),
            )),
            (_, Some(arch)) => Ok(EncoderSource::RandomInit { arch, seed }),
            _ => bail!("--random-init needs --arch"),
        }
    }
}
