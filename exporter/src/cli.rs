//! The flags of `moco-export`, shared verbatim by `moco-train export`.

use std::path::PathBuf;

use clap::Args;
use models::Arch;

use datasets::Split;

use crate::quantize::{Calibration, KeepFloat};
use crate::{
    export_quantized, ExportError, ExportOptions, ExportSummary, LoadOptions, QuantizeOptions,
};

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Backbone: RUN/encoder.safetensors, or a PyTorch file (MoCo's checkpoint_NNNN.pth.tar, a
    /// torchvision state_dict .pth/.pt, a Lightning .ckpt), read without executing it.
    #[arg(long)]
    pub encoder: PathBuf,
    /// The backbone's prefix in a file's tensor names (`module.encoder_q.`, `backbone.`).
    /// Default: detected (the query/online encoder when the file also holds its momentum copy).
    #[arg(long)]
    pub encoder_prefix: Option<String>,
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
    /// Quantize: `int8` writes a QDQ model (int8 per-channel weights, uint8 activations
    /// calibrated on --calibration-data) that ONNX Runtime runs with integer kernels.
    #[arg(long, value_enum, requires = "calibration_data")]
    pub quantize: Option<Quantize>,
    /// Dataset root whose images calibrate the activation ranges (the eval transform).
    #[arg(long)]
    pub calibration_data: Option<PathBuf>,
    #[arg(long, default_value = "train")]
    pub calibration_split: Split,
    /// Images used for calibration, spread evenly over the split.
    #[arg(long, default_value_t = 512)]
    pub calibration_images: usize,
    /// How activation ranges are chosen from their histograms: `auto` tries minmax, percentile
    /// (99.99 %), mse (least rounding + clipping error) and entropy (least KL divergence) and
    /// keeps the model whose top-1 agrees best with fp32 on up to 256 other images of the split
    #[arg(long, value_enum, default_value = "auto")]
    pub calibration: Calibration,
    /// Refuse (write nothing) when the int8 model's top-1 differs from fp32's on more than this
    /// many percent of the check images
    #[arg(long)]
    pub max_drop: Option<f64>,
    /// Layers left in float: `auto` quantizes each Conv (and the average pool) alone, ranks them
    /// by the output error that costs, and keeps up to 3 of the most sensitive in float while
    /// each makes the model agree with fp32 more often on the check images; `none`; or names
    /// (`conv1,layer4.1.conv2,avgpool`)
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(KeepFloat))]
    pub keep_float: KeepFloat,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    Int8,
}

impl ExportArgs {
    pub fn run(&self) -> Result<ExportSummary, ExportError> {
        if self.out.extension().and_then(|e| e.to_str()) != Some("onnx") {
            return Err(ExportError::Flag(format!(
                "--out {}: expected a path ending in .onnx",
                self.out.display()
            )));
        }
        if let Some(m) = self.max_drop.filter(|m| !(0.0..=100.0).contains(m)) {
            return Err(ExportError::Flag(format!(
                "--max-drop {m}: a share of images in percent, 0 to 100"
            )));
        }
        let quant = match (self.quantize, &self.calibration_data) {
            (Some(Quantize::Int8), Some(data)) => Some(QuantizeOptions {
                data: data.clone(),
                split: self.calibration_split,
                format: None,
                images: self.calibration_images,
                calibration: self.calibration,
                max_drop: self.max_drop,
                keep_float: self.keep_float.clone(),
            }),
            _ => None,
        };
        export_quantized(
            &LoadOptions {
                encoder: &self.encoder,
                encoder_prefix: self.encoder_prefix.as_deref(),
                classifier: self.classifier.as_deref(),
                arch: self.arch,
                classes: self.classes.as_deref(),
                config: self.config.as_deref(),
            },
            ExportOptions {
                fold: !self.no_fold,
                with_features: self.with_features,
            },
            quant.as_ref(),
            &self.out,
        )
    }

    /// Runs and reports like every command: a readable line on stderr, JSON with `--json`.
    pub fn run_and_report(&self) -> Result<(), ExportError> {
        let s = self.run()?;
        let int8 = s.quantization.as_ref().map_or(String::new(), |q| {
            let agree = q.top1_agreement.map_or(String::new(), |a| {
                format!(
                    ", top-1 as fp32 on {:.1} % of {} {} images",
                    100.0 * a,
                    q.check_images,
                    if q.held_back {
                        "held-back"
                    } else {
                        "calibration"
                    }
                )
            });
            let float = match q.float_layers.as_slice() {
                [] => String::new(),
                l => format!(", {} in float", l.join(" ")),
            };
            format!(
                ", int8 calibrated ({}) on {} images{float}{agree}",
                q.calibration.name(),
                q.calibration_images
            )
        });
        eprintln!(
            "exported {} ({} nodes, outputs {}, {} classes, BN {}{int8}) to {} ({:.1} MB)",
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
