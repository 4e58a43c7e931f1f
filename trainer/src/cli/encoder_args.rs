//! `--encoder-prefix`, shared by every command that reads `--encoder`.

use std::path::Path;

use models::EncoderFile;

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
