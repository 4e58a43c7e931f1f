//! `moco-train synth`'s flags: the embedded default dataset.

use std::path::PathBuf;

use clap::Args;
use datasets::synth::SynthConfig;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output directory (must not exist; written to a temp directory, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes, 1..=10000: ten texture families; beyond ten each family repeats in
    /// bands of period and grey level (`--classes 800` for the competition's shape).
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Labeled training images per class (500: kNN's k=200 needs more than 100 per class).
    #[arg(long, default_value_t = 500)]
    pub train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 50)]
    pub val_per_class: usize,
    /// Unlabeled images (classes drawn uniformly).
    #[arg(long, default_value_t = 2000)]
    pub unlabeled: usize,
    /// Seed; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `folder` (class folders and classes.txt) or `competition` (numbered PNGs, shuffled across
    /// classes, and torch.save label tensors).
    #[arg(long, default_value = "folder")]
    pub layout: datasets::Format,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl SynthArgs {
    pub fn run(&self) -> anyhow::Result<()> {
        let cfg = SynthConfig {
            classes: self.classes,
            train_per_class: self.train_per_class,
            val_per_class: self.val_per_class,
            unlabeled: self.unlabeled,
            seed: self.seed,
            layout: self.layout,
        };
        let s = datasets::synth::write_dataset(&self.out, &cfg, true)?;
        eprintln!(
            "synth: {} classes, {} train, {} val, {} unlabeled images in {} ({} layout)",
            s.classes,
            s.train,
            s.val,
            s.unlabeled,
            s.out,
            s.layout.name()
        );
        if self.json {
            println!("{}", serde_json::to_string(&s)?);
        }
        Ok(())
    }
}
