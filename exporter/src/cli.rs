//! The flags of `moco-export`, shared verbatim by `moco-train export`.

use std::path::PathBuf;

use clap::Args;
use models::Arch;

use crate::{export, ExportError, ExportOptions, ExportSummary, LoadOptions};

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Backbone checkpoint with torchvision names (RUN/encoder.safetensors).
    #[arg(long)]
    pub encoder: PathBuf,
    /// Linear classifier (RUN/classifier.safetensors: fc.weight, fc.bias). Without it the model
    /// is encoder-only and outputs `features`.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Where to write the .onnx file (written to a temp file, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// Also output the pooled backbone features `features` [N, D] beside `logits`.
    #[arg(long)]
    pub with_features: bool,
    /// Keep BatchNormalization nodes instead of folding them into the convolutions (debugging).
    #[arg(long)]
    pub no_fold: bool,
    /// Expected architecture; an error if the checkpoint holds another. Default: detected.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Class names, one per line (`name` or `index<TAB>name`). Default: the classifier's
    /// `moco.classes` metadata, else "0".."C-1".
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// The run's config.json (preprocessing, provenance). Default: config.json beside --encoder.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl ExportArgs {
    pub fn run(&self) -> Result<ExportSummary, ExportError> {
        if self.out.extension().and_then(|e| e.to_str()) != Some("onnx") {
            return Err(ExportError::Flag(format!(
                "--out {}: expected a path ending in .onnx",
                self.out.display()
            )));
        }
        export(
            &LoadOptions {
                encoder: &self.encoder,
                classifier: self.classifier.as_deref(),
                arch: self.arch,
                classes: self.classes.as_deref(),
                config: self.config.as_deref(),
            },
            ExportOptions {
                fold: !self.no_fold,
                with_features: self.with_features,
            },
            &self.out,
        )
    }

    /// Runs and reports like every command: a readable line on stderr, JSON with `--json`.
    pub fn run_and_report(&self) -> Result<(), ExportError> {
        let s = self.run()?;
        eprintln!(
            "exported {} ({} nodes, outputs {}, {} classes, BN {}) to {} ({:.1} MB)",
            s.arch,
            s.nodes,
            s.outputs.join("+"),
            s.classes,
            if s.folded { "folded" } else { "kept" },
            s.out,
            s.bytes as f64 / 1e6
        );
        if self.json {
            println!("{}", serde_json::to_string(&s).unwrap_or_default());
        }
        Ok(())
    }
}
