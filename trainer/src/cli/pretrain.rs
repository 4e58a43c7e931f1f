//! `moco-train pretrain`'s flags, and how they become a [`PretrainConfig`]: the values given on
//! the command line, then a preset's, then the method's published recipe.

use super::log_args::TensorboardArgs;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use datasets::layout::Split;
use models::Arch;

use super::aug_args::AugArgs;
use super::eval_args::EvalArgs;
use crate::augment::AugConfig;
use crate::config::{
    Amp, KnnMonitorConfig, Length, OptimConfig, PretrainConfig, Recipe, RunSettings,
};
use crate::methods;
use crate::nn::optim::OptimizerKind;
use crate::preset::Preset;
use crate::runtime::dist::DistBackend;

#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// Dataset, decoding, threads and device (the flags of knn, linear and label-request too;
    /// under torchrun, `--device cuda` means cuda:LOCAL_RANK).
    #[command(flatten)]
    pub io: EvalArgs,
    /// The view size and the parts of the augmentations that are switched off.
    #[command(flatten)]
    pub aug: AugArgs,
    /// The self-supervised method. Each fills the flags left unset with its published recipe
    /// (`moco-train methods` lists them).
    #[arg(long, default_value = "mocov2", value_parser = clap::builder::PossibleValuesParser::new(methods::names()))]
    pub method: String,
    /// A named recipe: fills the flags this command line leaves unset, before the method does.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Splits whose images are pretrained on (labels ignored), comma-separated.
    #[arg(long, default_value = "unlabeled,train")]
    pub splits: String,
    /// Repeat a run: the flags recorded in its config.json (`RUN/config.json`), each flag given
    /// here overriding the recorded one.
    #[arg(long, value_name = "CONFIG_JSON")]
    pub config: Option<PathBuf>,
    /// Run directory: encoder.safetensors, metrics.jsonl, config.json, checkpoints/.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub tensorboard: TensorboardArgs,
    #[arg(long, default_value = "resnet18")]
    pub arch: Arch,
    /// Epochs (passes over the pretraining images); `--steps` overrides.
    #[arg(long, default_value_t = 200)]
    pub epochs: u64,
    /// Total optimizer steps (overrides `--epochs`).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// sgd or lars (default: the method's).
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Base learning rate for a batch of 256; the run uses lr × batch/256 (default: the
    /// method's; mocov2 0.06).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay (default: the method's; mocov2 5e-4).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// The optimizer's momentum (default 0.9).
    #[arg(long)]
    pub sgd_momentum: Option<f64>,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Keep the lr constant instead of the cosine decay.
    #[arg(long)]
    pub no_cosine: bool,
    /// Queue size K (negatives) of the methods with a queue; a multiple of the keys per step
    /// (default: the method's; mocov2 2048).
    #[arg(long)]
    pub queue_size: Option<i64>,
    /// Momentum of the key (target) encoder, m or τ (default: the method's; mocov2 0.99).
    #[arg(long)]
    pub moco_momentum: Option<f64>,
    /// Softmax temperature T (default: the method's; mocov2 0.2).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// BatchNorm statistics over this many groups of the batch (MoCo's shuffle BN; default: the
    /// method's; mocov2 8, methods without shuffle BN 1 = the whole batch, as their SyncBN).
    #[arg(long)]
    pub bn_splits: Option<i64>,
    /// Symmetric MoCo v1/v2 loss (both views as queries; twice the keys per step).
    #[arg(long)]
    pub symmetric: bool,
    /// BatchNorm in MoCo v2's projection MLP (MoCo v3's projector: Linear-BN-ReLU-Linear-BN),
    /// split for shuffle BN like the backbone's. It removes the embeddings' common offset,
    /// through which a plain MLP can tell fresh keys from queued ones by the encoder's drift.
    #[arg(long)]
    pub head_bn: bool,
    /// Embedding width, the projector's output (default: the method's; mocov2 128).
    #[arg(long)]
    pub proj_dim: Option<usize>,
    /// Hidden width of the projector and predictor (default: the method's; mocov2 the backbone's
    /// feature width).
    #[arg(long)]
    pub mlp_hidden: Option<usize>,
    /// Mixed precision: the forward under autocast, the loss in float32. bf16 on CUDA or on a CPU
    /// with native bf16 (avx512_bf16 or AMX); fp16 on CUDA, with a dynamic loss scaler.
    #[arg(long, value_enum, default_value_t = Amp::Off)]
    pub amp: Amp,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Continue from the latest good checkpoint in --out (starts fresh when there is none).
    #[arg(long)]
    pub resume: bool,
    /// Labeled dataset for the kNN monitor (default: --data when it has labels).
    #[arg(long)]
    pub knn_data: Option<PathBuf>,
    #[arg(long, default_value = "train")]
    pub knn_bank_split: Split,
    #[arg(long, default_value = "val")]
    pub knn_query_split: Split,
    /// kNN monitor every N epochs (0: only at the end; off with --no-knn).
    #[arg(long, default_value_t = 10)]
    pub knn_every: u64,
    #[arg(long)]
    pub no_knn: bool,
    /// Log a metrics line every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep NCHW on CUDA (channels_last is the default there: faster convolutions on tensor cores).
    #[arg(long)]
    pub no_channels_last: bool,
    /// channels_last on the CPU too (oneDNN's NHWC convolutions; NCHW is the CPU default).
    #[arg(long, conflicts_with = "no_channels_last")]
    pub channels_last: bool,
    /// Start N local ranks (data-parallel over c10d/Gloo, as torchrun would); the global batch
    /// is --batch-size, each rank takes 1/N of it. Under torchrun-style variables (RANK,
    /// WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) this process is one of the ranks.
    #[arg(long, default_value_t = 1)]
    pub nproc: usize,
    /// Seconds a rank waits for the rendezvous or for a collective before giving up.
    #[arg(long, default_value_t = 1800)]
    pub dist_timeout: u64,
    /// Collectives of a distributed run: auto (NCCL on CUDA when built with it, else Gloo), gloo
    /// or nccl. Naming one outside torchrun/--nproc runs a group of one rank (a backend check).
    #[arg(long, value_enum, default_value_t = DistBackend::Auto)]
    pub dist_backend: DistBackend,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Train in float64 (no --amp, no kNN monitor; CPU or CUDA): a check mode whose numbers do not
    /// depend on the device's float path, for comparing two runs of the same algorithm over many
    /// steps (`moco-train compare`). The encoder file is float32; checkpoints keep float64.
    #[arg(long)]
    pub float64: bool,
    /// Start from this state instead of the seed's own draw: a file of `--save-init` or any
    /// checkpoint of a run with the same method and architecture (networks, key encoder, queue;
    /// the optimizer starts empty). Two runs on different devices or in different precisions
    /// then start identical, and `moco-train compare` holds them against each other.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// float32 convolutions and matmuls on CUDA in full float32 instead of TF32 (PyTorch's
    /// default for cuDNN): slower, and rounded as on a CPU, which `moco-train compare` needs.
    #[arg(long)]
    pub no_tf32: bool,
    /// Capture the training step once as a CUDA graph and replay it (CUDA only; one process,
    /// not with --amp fp16): the host launches one graph a step instead of hundreds of kernels.
    /// A replayed step logs the loss only
    #[arg(long)]
    pub cuda_graph: bool,
    /// Write the run's freshly drawn state (networks, key encoder, queue) to this file and stop
    /// before opening the data.
    #[arg(long)]
    pub save_init: Option<PathBuf>,
}

impl PretrainArgs {
    /// The numbers given on this command line.
    fn given(&self) -> Recipe {
        Recipe {
            optimizer: self.optimizer,
            lr: self.lr,
            weight_decay: self.weight_decay,
            optim_momentum: self.sgd_momentum,
            temperature: self.temperature,
            momentum: self.moco_momentum,
            queue_size: self.queue_size,
            bn_splits: self.bn_splits,
            symmetric: self.symmetric.then_some(true),
            head_bn: self.head_bn.then_some(true),
            proj_dim: self.proj_dim,
            mlp_hidden: self.mlp_hidden,
            crop: self.aug.crop,
            crop_from: self.aug.crop_from,
        }
    }

    /// The command line, then the preset, then the method's published recipe.
    pub fn recipe(&self) -> Result<Recipe> {
        let entry = methods::find(&self.method)?;
        let mut r = self.given();
        if let Some(p) = self.preset {
            r = r.or(p.recipe(&self.method, self.batch_size)?);
        }
        Ok(r.or((entry.recipe)(self.arch)).or(Recipe::common()))
    }

    /// The whole configuration, every number decided.
    pub fn to_config(&self) -> Result<PretrainConfig> {
        let entry = methods::find(&self.method)?;
        let r = self.recipe()?;
        let crop = r.crop.unwrap_or(self.io.size);
        let splits = crate::data::parse_splits(&self.splits)
            .map_err(|e| anyhow::anyhow!("--splits: {e}"))?;
        let m = &self.method;
        let augmentation = AugConfig {
            size_from: ramp_start(self.aug.crop_from, r.crop_from, crop),
            ..self.aug.apply((entry.augmentation)(crop))
        };
        if augmentation.small.is_some() && !entry.small_views {
            anyhow::bail!("--small-crops: {m} takes no small views (multi-crop is MoCo v1/v2's)");
        }
        Ok(PretrainConfig {
            data: self.io.source(),
            splits,
            arch: self.arch,
            method: (entry.config)(&r, self.arch)?,
            optim: OptimConfig {
                kind: decided(r.optimizer, "--optimizer", m)?,
                lr: decided(r.lr, "--lr", m)?,
                weight_decay: decided(r.weight_decay, "--weight-decay", m)?,
                momentum: decided(r.optim_momentum, "--sgd-momentum", m)?,
                warmup_steps: self.warmup_steps,
                cosine: !self.no_cosine,
            },
            batch_size: self.batch_size,
            bn_splits: decided(r.bn_splits, "--bn-splits", m)?,
            length: match self.steps {
                Some(s) => Length::Steps(s),
                None => Length::Epochs(self.epochs),
            },
            augmentation,
            amp: self.amp,
            seed: self.seed,
            float64: self.float64,
            init_from: self.init_from.clone(),
            knn: (!self.no_knn).then(|| KnnMonitorConfig {
                data: self.knn_data.clone(),
                bank: self.knn_bank_split,
                query: self.knn_query_split,
                every: self.knn_every,
            }),
            run: RunSettings {
                command_line: Vec::new(),
                out: self.out.clone(),
                compute: self.io.compute(),
                dist_backend: self.dist_backend,
                dist_timeout: self.dist_timeout,
                channels_last: match (self.channels_last, self.no_channels_last) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                checkpoint_every: self.checkpoint_every,
                log_every: self.log_every,
                resume: self.resume,
                tensorboard: self.tensorboard.dir(&self.out),
                progress: !self.quiet && !self.json,
                preset: self.preset.map(|p| p.name().to_string()),
                save_init: self.save_init.clone(),
                no_tf32: self.no_tf32,
                device_path: false,
                cuda_graph: self.cuda_graph,
            },
        })
    }
}

/// Where the views' side starts: `--crop-from` as given, or a preset's ramp when it starts below
/// the run's crop (a preset's 40 → 64 px has nothing to climb under `--crop 32`).
fn ramp_start(given: Option<u32>, recipe: Option<u32>, crop: u32) -> Option<u32> {
    given.or(recipe.filter(|&from| from < crop))
}

/// A value every layer of the recipe left unset: an error naming the flag.
fn decided<T>(v: Option<T>, flag: &str, method: &str) -> Result<T> {
    v.ok_or_else(|| anyhow::anyhow!("{flag}: {method} has no default"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: PretrainArgs,
    }

    fn config(args: &[&str]) -> PretrainConfig {
        let argv = [&["x", "--data", "d", "--out", "o"], args].concat();
        Cli::parse_from(argv).a.to_config().unwrap()
    }

    /// The error of a command line `to_config` refuses.
    fn refused(args: &[&str]) -> anyhow::Error {
        let argv = [&["x", "--data", "d", "--out", "o"], args].concat();
        Cli::parse_from(argv).a.to_config().unwrap_err()
    }

    #[test]
    fn small_data_fills_the_unset_flags_and_keeps_the_given_ones() {
        let a = config(&[
            "--preset",
            "small-data",
            "--batch-size",
            "128",
            "--lr",
            "0.1",
        ]);
        assert_eq!(a.augmentation.size, 64);
        assert_eq!(a.optim.lr, 0.1, "an explicit --lr wins");
        assert_eq!((a.method.queue_size, a.bn_splits), (4096, 4));
        assert!(a.method.projector.hidden_norm && a.method.projector.out_norm);
        let b = config(&["--preset", "small-data", "--crop", "80", "--bn-splits", "1"]);
        assert_eq!(
            (b.augmentation.size, b.bn_splits, b.optim.lr),
            (80, 1, 0.24)
        );
        let plain = config(&[]);
        assert_eq!(
            (
                plain.augmentation.size,
                plain.method.projector.hidden_norm,
                plain.bn_splits
            ),
            (96, false, 8)
        );
    }

    #[test]
    fn small_data_fast_is_small_data_with_its_three_changes() {
        let a = config(&["--preset", "small-data-fast", "--batch-size", "128"]);
        assert_eq!(
            (a.augmentation.size, a.augmentation.size_from),
            (64, Some(40))
        );
        assert_eq!(
            (a.method.queue_size, a.bn_splits, a.optim.lr),
            (1024, 4, 0.24)
        );
        assert!(a.method.symmetric && a.method.projector.hidden_norm);
        let ramps: [(&[&str], Option<u32>, &str); 3] = [
            (
                &["--preset", "small-data-fast", "--crop-from", "48"],
                Some(48),
                "an explicit --crop-from wins",
            ),
            (
                &["--preset", "small-data-fast", "--crop", "32"],
                None,
                "no ramp down to a smaller crop",
            ),
            (
                &["--crop", "32", "--crop-from", "48"],
                Some(48),
                "a given ramp is kept as given",
            ),
        ];
        for (args, from, why) in ramps {
            assert_eq!(config(args).augmentation.size_from, from, "{why}");
        }
        let err = refused(&["--method", "byol", "--preset", "small-data-fast"]);
        assert!(
            err.to_string().contains("--preset small-data-fast"),
            "{err}"
        );
    }

    #[test]
    fn each_method_fills_its_published_recipe() {
        let v1 = config(&["--method", "mocov1"]);
        assert_eq!((v1.method.temperature, v1.method.momentum), (0.07, 0.999));
        assert_eq!(
            (v1.method.projector.layers, v1.augmentation.blur_p),
            (1, 0.0)
        );
        let v3 = config(&["--method", "mocov3", "--temperature", "0.5"]);
        assert_eq!(v3.method.temperature, 0.5, "an explicit flag wins");
        assert_eq!(v3.optim.kind, OptimizerKind::Lars);
        assert!(v3.method.predictor.is_some() && v3.method.queue_size == 0);
        assert_eq!(
            v3.method.momentum_schedule,
            crate::nn::optim::MomentumSchedule::Cosine
        );
        let err = refused(&["--method", "simclr", "--queue-size", "64"]);
        assert!(err.to_string().contains("--queue-size"), "{err}");
        let err = refused(&["--method", "simclr", "--preset", "small-data"]);
        assert!(err.to_string().contains("--preset"), "{err}");
    }

    #[test]
    fn small_crops_are_moco_v1_and_v2s() {
        let a = config(&["--small-crops", "4", "--small-scale", "0.05,0.2"]);
        let small = a.augmentation.small.expect("small views");
        assert_eq!((small.count, small.size, small.scale), (4, 32, (0.05, 0.2)));
        assert!(a.validate(1).is_ok());
        assert!(config(&[]).augmentation.small.is_none());
        let err = refused(&["--method", "byol", "--small-crops", "2"]);
        assert!(err.to_string().contains("--small-crops: byol"), "{err}");
    }
}
