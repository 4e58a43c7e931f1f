//! `moco-train merge-labels`'s flags → [`MergeLabelsConfig`].

use std::path::PathBuf;

use datasets::layout::{Format, Split};

use datasets::merge_labels::MergeLabelsConfig;

#[derive(clap::Args, Debug)]
pub struct MergeLabelsArgs {
    /// The dataset the request was made from (read only).
    #[arg(long)]
    pub data: PathBuf,
    /// Dataset layout; detected when omitted.
    #[arg(long)]
    pub format: Option<Format>,
    /// The request CSV written by `label-request`.
    #[arg(long)]
    pub request: PathBuf,
    /// The returned labels: a CSV with columns `image` (as in the request) and `label` (a class
    /// name, or a class index when no class has that name).
    #[arg(long)]
    pub labels: PathBuf,
    /// The new dataset root (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// The split the request was made from.
    #[arg(long, default_value = "unlabeled")]
    pub split: Split,
    /// The labeled split the images join.
    #[arg(long, default_value = "train")]
    pub train_split: Split,
    /// Copy unchanged files instead of hard-linking them.
    #[arg(long)]
    pub copy: bool,
    /// Merge what came back when some requested images have no label (otherwise refused).
    #[arg(long)]
    pub partial: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl MergeLabelsArgs {
    pub fn to_config(&self) -> anyhow::Result<MergeLabelsConfig> {
        Ok(MergeLabelsConfig {
            data: self.data.clone(),
            format: self.format,
            request: self.request.clone(),
            labels: self.labels.clone(),
            out: self.out.clone(),
            split: self.split,
            train_split: self.train_split,
            copy: self.copy,
            partial: self.partial,
            progress: !self.json,
        })
    }
}
