//! Typed configuration of `pretrain`, built from the flags (`crate::cli`), written to
//! `config.json` and compared field by field on resume. The library takes these, never the
//! command line's structs.
//!
//! Three layers, each complete before the next is built:
//! - [`Recipe`]: the tunable numbers, each unset until the command line, a preset or the method's
//!   published recipe sets it (in that order of precedence);
//! - [`PretrainConfig`]: everything a run needs, with every number decided;
//! - [`Algorithm`]: what changes the numbers of a step, with the counts known only once the data
//!   is open (images, total steps) — the record that a resume must agree with.

use std::path::PathBuf;

use anyhow::{bail, Result};
use datasets::layout::{Format, Split};
use models::{Arch, MlpShape};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::augment::AugConfig;
pub use crate::nn::amp::Amp;
use crate::nn::optim::{MomentumSchedule, OptimizerKind};
use crate::runtime::dist::DistBackend;

/// What a CPU bf16 step costs where oneDNN has no native bf16 kernels: measured with oneDNN held
/// to AVX2 (docs/benchmarks.md, "Mixed precision on the CPU").
const EMULATED_BF16: &str = "bf16 steps measured 22× slower than float32 there; use --amp off";

/// The tunable numbers of a pretraining run. `None` = not decided yet; [`Recipe::or`] fills the
/// gaps from a lower-precedence source.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recipe {
    pub optimizer: Option<OptimizerKind>,
    /// Base lr for a batch of 256 (the run uses lr × batch/256).
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    /// The optimizer's momentum.
    pub optim_momentum: Option<f64>,
    pub temperature: Option<f64>,
    /// Key (target) encoder momentum m, or BYOL's τ.
    pub momentum: Option<f64>,
    pub queue_size: Option<i64>,
    pub bn_splits: Option<i64>,
    pub symmetric: Option<bool>,
    /// BatchNorm in the projector (MoCo v1/v2).
    pub head_bn: Option<bool>,
    /// Embedding width (the projector's output).
    pub proj_dim: Option<usize>,
    /// Hidden width of the projector and predictor MLPs (0: the backbone's feature width).
    pub mlp_hidden: Option<usize>,
    /// Side of the augmented views (None: the decoded size).
    pub crop: Option<u32>,
    /// Progressive resizing: the views' side at the first step, growing to `crop` over the run.
    pub crop_from: Option<u32>,
}

macro_rules! fill {
    ($self:ident, $other:ident, $($f:ident),*) => {
        Recipe { $($f: $self.$f.or($other.$f)),* }
    };
}

impl Recipe {
    /// What a method's recipe may leave unset: SGD with momentum 0.9, one BatchNorm group.
    pub fn common() -> Recipe {
        Recipe {
            optimizer: Some(OptimizerKind::Sgd),
            optim_momentum: Some(0.9),
            bn_splits: Some(1),
            ..Recipe::default()
        }
    }

    /// Each unset value taken from `fallback`.
    pub fn or(self, fallback: Recipe) -> Recipe {
        fill!(
            self,
            fallback,
            optimizer,
            lr,
            weight_decay,
            optim_momentum,
            temperature,
            momentum,
            queue_size,
            bn_splits,
            symmetric,
            head_bn,
            proj_dim,
            mlp_hidden,
            crop,
            crop_from
        )
    }
}

/// A method's own hyperparameters: what its step computes with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodConfig {
    /// Its name in the registry (`crate::methods::REGISTRY`).
    pub name: String,
    pub temperature: f64,
    /// Key (target) encoder momentum; 0 for methods without one.
    pub momentum: f64,
    pub momentum_schedule: MomentumSchedule,
    /// Negatives kept from earlier steps; 0: none.
    pub queue_size: i64,
    /// Both views as queries (MoCo's option; always so in MoCo v3 and BYOL).
    pub symmetric: bool,
    pub projector: MlpShape,
    pub predictor: Option<MlpShape>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    /// Base lr for a batch of 256.
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    /// Linear warmup steps before the cosine decay.
    pub warmup_steps: u64,
    pub cosine: bool,
}

/// How long a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Length {
    Steps(u64),
    /// Passes over the pretraining images.
    Epochs(u64),
}

/// Where images come from and how they are decoded (every command that reads a dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    pub root: PathBuf,
    pub format: Option<Format>,
    /// Side of the decoded images.
    pub size: u32,
    /// Where decoded stores live (None: `$MOCO_CACHE_DIR` or `~/.cache/moco-rs`).
    pub cache_dir: Option<PathBuf>,
}

impl DataSource {
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(crate::data::default_cache_dir)
    }

    /// One split, decoded into (or read from) its store.
    pub fn open(&self, split: Split, progress: bool) -> Result<crate::data::DecodedSplit> {
        let mut splits = self.open_all(&[split], progress)?;
        Ok(splits.remove(0))
    }

    /// Splits in order, each decoded into (or read from) its store: the one way every command
    /// opens a dataset.
    pub fn open_all(
        &self,
        splits: &[Split],
        progress: bool,
    ) -> Result<Vec<crate::data::DecodedSplit>> {
        let cache = self.cache_dir();
        splits
            .iter()
            .map(|&s| {
                // Dataset errors start with the flag or the file at fault already.
                let data = datasets::layout::open(&self.root, s, self.format)?;
                crate::data::DecodedSplit::open(&data, self.size, &cache, progress)
            })
            .collect()
    }
}

/// Where a command's network runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    /// libtorch intra-op threads (None: all cores).
    pub threads: Option<i32>,
    /// auto, cpu, cuda or cuda:N.
    pub device: String,
}

impl Compute {
    /// Sets the thread count and resolves the device.
    pub fn setup(&self) -> Result<tch::Device> {
        crate::runtime::threads::set(self.threads);
        models_tch::parse_device(&self.device).map_err(anyhow::Error::msg)
    }

    /// Refuses `ranks` local processes (`--nproc`) that the GPUs cannot hold, before any starts:
    /// rank r takes GPU r, so there must be a GPU per rank, and a single named GPU
    /// (`--device cuda:N`) cannot serve several.
    pub fn check_local_ranks(&self, ranks: usize) -> Result<()> {
        let visible = tch::Cuda::device_count().max(0) as usize;
        let cuda = match self.device.as_str() {
            "cpu" => false,
            "auto" => visible > 0,
            "cuda" => true,
            d => bail!("--device {d} --nproc {ranks}: a rank per GPU needs --device cuda (rank r takes GPU r)"),
        };
        if cuda && ranks > visible {
            bail!(
                "--nproc {ranks}: only {visible} CUDA device(s) visible{}; start at most \
                 {visible} ranks on this machine",
                std::env::var("CUDA_VISIBLE_DEVICES")
                    .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The kNN accuracy measured during pretraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnMonitorConfig {
    /// A labeled dataset other than the pretraining one.
    pub data: Option<PathBuf>,
    pub bank: Split,
    pub query: Split,
    /// Every N epochs (0: only at the end).
    pub every: u64,
}

/// How a run is carried out; none of it changes a step's numbers, so a resume may change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub out: PathBuf,
    pub compute: Compute,
    pub dist_backend: DistBackend,
    /// Seconds a rank waits for the rendezvous or a collective.
    pub dist_timeout: u64,
    /// None: channels_last on CUDA, NCHW on the CPU.
    pub channels_last: Option<bool>,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub resume: bool,
    pub progress: bool,
    /// TensorBoard event files (None: none written).
    #[serde(default)]
    pub tensorboard: Option<PathBuf>,
    /// The named recipe the numbers came from, if any (recorded, already applied).
    pub preset: Option<String>,
    /// Write the freshly drawn state here and stop (`--save-init`).
    #[serde(default)]
    pub save_init: Option<PathBuf>,
    /// float32 convolutions and matmuls on CUDA without TF32 (`--no-tf32`).
    #[serde(default)]
    pub no_tf32: bool,
    /// The GPU's step on any device (`bench-step --gpu-path`; always on CUDA): the batched
    /// augmentation, and both views through a network in one forward. On the CPU it shows what a
    /// GPU step dispatches; the CPU's own step keeps PyTorch's order of arithmetic.
    #[serde(default)]
    pub device_path: bool,
    /// The step captured once as a CUDA graph and replayed (`--cuda-graph`).
    #[serde(default)]
    pub cuda_graph: bool,
    /// The flags that built this configuration, recorded for `--config` (empty in-process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_line: Vec<String>,
}

/// Everything `pretrain` needs, every number decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub data: DataSource,
    pub splits: Vec<Split>,
    pub arch: Arch,
    pub method: MethodConfig,
    pub optim: OptimConfig,
    pub batch_size: usize,
    /// Shuffle-BN groups of the whole batch (over all ranks).
    pub bn_splits: i64,
    pub length: Length,
    pub augmentation: AugConfig,
    pub amp: Amp,
    pub seed: u64,
    /// A check mode: variables, views and loss in float64 (CPU or CUDA, to compare the two).
    pub float64: bool,
    /// Start from this state (`--save-init` file or checkpoint) instead of the seed's draw.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    pub knn: Option<KnnMonitorConfig>,
    pub run: RunSettings,
}

impl PretrainConfig {
    /// This configuration with the flags that built it, for config.json.
    pub fn recorded(mut self, command_line: Vec<String>) -> Self {
        self.run.command_line = command_line;
        self
    }

    /// The checks that need no data: batch, BN groups, queue and world size fit together.
    pub fn validate(&self, world: usize) -> Result<()> {
        let (b, s) = (self.batch_size, self.bn_splits);
        if b == 0 || s < 1 || b as i64 % s != 0 {
            bail!("--batch-size {b} must be a positive multiple of --bn-splits {s}");
        }
        if !b.is_multiple_of(world) || s % world as i64 != 0 {
            bail!(
                "--batch-size {b} and --bn-splits {s} must be multiples of the world size {world} \
                 (each rank takes an equal share of the batch and of its BN groups)"
            );
        }
        self.augmentation.check()?;
        if self.run.cuda_graph && world > 1 {
            bail!("--cuda-graph: one process only (the ranks' collectives are not captured)");
        }
        if self.float64 && (self.amp != Amp::Off || self.knn.is_some()) {
            bail!("--float64 is a check mode: use it with --amp off and --no-knn");
        }
        Ok(())
    }

    /// The run's length in steps, once the data is open: the checks that need the images.
    pub fn total_steps(&self, images: usize, steps_per_epoch: u64) -> Result<u64> {
        if self.batch_size > images {
            bail!(
                "--batch-size {} is larger than the {images} pretraining images",
                self.batch_size
            );
        }
        let total = match self.length {
            Length::Steps(s) => s,
            Length::Epochs(e) => e * steps_per_epoch,
        };
        if total == 0 {
            bail!("--steps/--epochs: nothing to train");
        }
        Ok(total)
    }

    /// The checks that need the device: `--amp` where it has kernels.
    pub fn validate_device(&self, device: tch::Device) -> Result<()> {
        match (self.amp, device.is_cuda()) {
            (Amp::Fp16, false) => {
                bail!("--amp fp16: float16 autocast is a CUDA mode; on the CPU use --amp bf16")
            }
            (Amp::Bf16, false) => {
                if let Some(why) = crate::runtime::isa::no_native_bf16() {
                    bail!("--amp bf16: {why}: {EMULATED_BF16}");
                }
            }
            _ => {}
        }
        self.validate_cuda_graph(device)
    }

    fn validate_cuda_graph(&self, device: tch::Device) -> Result<()> {
        if !self.run.cuda_graph {
            return Ok(());
        }
        if !device.is_cuda() {
            bail!("--cuda-graph: captures work queued on a CUDA device; this run is on the CPU");
        }
        if self.amp == Amp::Fp16 {
            bail!("--cuda-graph: not with --amp fp16, whose loss scaler decides on the host whether a step is taken");
        }
        if !crate::runtime::cuda_graph::built() {
            bail!("--cuda-graph: this moco-train was built without the CUDA runtime's headers (scripts/setup.sh installs them)");
        }
        Ok(())
    }

    /// The record of this run once the data is open.
    pub fn algorithm(&self, images: usize, total_steps: u64) -> Algorithm {
        Algorithm {
            method: self.method.clone(),
            arch: self.arch,
            data: DataRecord {
                root: self.data.root.display().to_string(),
                splits: self.splits.clone(),
                images,
                size: self.data.size,
            },
            batch_size: self.batch_size,
            total_steps,
            bn_splits: self.bn_splits,
            optimizer: self.optim.clone(),
            augmentation: self.augmentation.clone(),
            amp: self.amp,
            seed: self.seed,
            float64: self.float64,
            init: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub root: String,
    pub splits: Vec<Split>,
    pub images: usize,
    pub size: u32,
}

/// Everything that changes the numbers of a step: `config.json`'s `algorithm`, stored in each
/// checkpoint; a resume with any field different is refused, naming the fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Algorithm {
    pub method: MethodConfig,
    pub arch: Arch,
    pub data: DataRecord,
    pub batch_size: usize,
    pub total_steps: u64,
    pub bn_splits: i64,
    pub optimizer: OptimConfig,
    pub augmentation: AugConfig,
    pub amp: Amp,
    pub seed: u64,
    pub float64: bool,
    /// The checksum of the state the run started from (`--init-from`), when not its own draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

impl Algorithm {
    /// Reads a stored record; one written before methods existed (flat MoCo v2 keys) is
    /// translated first.
    pub fn from_stored(v: &Value) -> Result<Algorithm> {
        let v = if v.get("method").is_none() {
            legacy_mocov2(v)
        } else {
            v.clone()
        };
        Ok(serde_json::from_value(v)?)
    }

    /// `path: stored → this` for every field that differs (nested fields by their dotted path).
    pub fn differences(&self, stored: &Algorithm) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(stored).unwrap_or_default(),
            serde_json::to_value(self).unwrap_or_default(),
        );
        let mut out = Vec::new();
        diff("", &a, &b, &mut out);
        out
    }
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} → {b}")),
        _ => {}
    }
}

/// The flat record of MoCo v2 runs written before methods existed, in today's shape.
fn legacy_mocov2(v: &Value) -> Value {
    let g = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let feature_dim = g("arch")
        .as_str()
        .and_then(|a| a.parse::<Arch>().ok())
        .map_or(512, |a| models::ResNetDesc::new(a).feature_dim);
    let head_bn = flag("head_bn");
    let splits: Vec<Value> = g("splits")
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(|s| Value::String(s.trim().into()))
        .collect();
    serde_json::json!({
        "method": {
            "name": "mocov2", "temperature": g("temperature"), "momentum": g("moco_momentum"),
            "momentum_schedule": "constant", "queue_size": g("queue_size"),
            "symmetric": g("symmetric"),
            "projector": {"layers": 2, "hidden": feature_dim, "out": models::MOCO_DIM,
                "bias": true, "hidden_norm": head_bn, "out_norm": head_bn},
            "predictor": null,
        },
        "arch": g("arch"),
        "data": {"root": g("data"), "splits": splits, "images": g("images"), "size": g("size")},
        "batch_size": g("batch_size"), "total_steps": g("total_steps"), "bn_splits": g("bn_splits"),
        "optimizer": {"kind": "sgd", "lr": g("lr"), "weight_decay": g("weight_decay"),
            "momentum": g("sgd_momentum"), "warmup_steps": g("warmup_steps"), "cosine": g("cosine")},
        "augmentation": g("augmentation"), "amp": g("amp"), "seed": g("seed"),
        "float64": flag("float64"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy() -> Value {
        serde_json::json!({
            "amp": "off", "arch": "resnet18", "augmentation": AugConfig::mocov2(96),
            "batch_size": 16, "bn_splits": 2, "cosine": true, "data": "/d", "images": 80,
            "lr": 0.06, "moco_momentum": 0.99, "queue_size": 32, "seed": 5, "sgd_momentum": 0.9,
            "size": 96, "splits": "unlabeled,train", "symmetric": false, "temperature": 0.2,
            "total_steps": 8, "warmup_steps": 0, "weight_decay": 0.0005
        })
    }

    #[test]
    fn a_legacy_record_reads_as_mocov2_and_differences_name_the_field() {
        let a = Algorithm::from_stored(&legacy()).unwrap();
        assert_eq!(a.method.name, "mocov2");
        assert_eq!(a.method.projector.hidden, 512);
        assert_eq!(a.data.splits, vec![Split::Unlabeled, Split::Train]);
        let mut b = a.clone();
        b.method.temperature = 0.1;
        b.optimizer.lr = 0.12;
        assert_eq!(
            b.differences(&a),
            vec![
                "method.temperature: 0.2 → 0.1".to_string(),
                "optimizer.lr: 0.06 → 0.12".to_string()
            ]
        );
        let stored = serde_json::to_value(&b).unwrap();
        assert_eq!(Algorithm::from_stored(&stored).unwrap(), b);
    }

    #[test]
    fn recipe_fills_only_the_gaps() {
        let given = Recipe {
            lr: Some(0.1),
            ..Default::default()
        };
        let r = given.or(Recipe {
            lr: Some(0.24),
            queue_size: Some(4096),
            ..Default::default()
        });
        assert_eq!(
            (r.lr, r.queue_size, r.temperature),
            (Some(0.1), Some(4096), None)
        );
    }
}
