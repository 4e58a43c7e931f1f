//! `moco-train pretrain`: the MoCo v2 training loop — data order and augmentations keyed by
//! (seed, step), shuffle BN, cosine lr, optional fp16/bf16 autocast, atomic checkpoints with an
//! exact resume, metrics.jsonl, the kNN monitor, and the backbone saved with torchvision names.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use datasets::layout::Split;
use models::{Arch, Preprocess};
use models_tch::to_tensor_map;
use serde::Serialize;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::augment::{AugConfig, Augmenter};
use crate::data::{self, DecodedSplit, ImageBank};
use crate::dist::{Dist, DistBackend, DistEnv};
use crate::knn;
use crate::metrics::MetricsLog;
use crate::moco::checkpoint::{self, State};
use crate::moco::model::{Moco, MocoConfig};
use crate::moco::optim::{LossScaler, Schedule, Sgd};
use crate::rng::{permutation, stream, Purpose};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    Off,
    Bf16,
    Fp16,
}

#[derive(Args, Debug, Clone)]
pub struct PretrainArgs {
    /// Dataset, decoding, threads and device (the flags of knn, linear and label-request too;
    /// under torchrun, `--device cuda` means cuda:LOCAL_RANK).
    #[command(flatten)]
    pub io: crate::eval_args::EvalArgs,
    /// The view size and the parts of aug+ that are switched off.
    #[command(flatten)]
    pub aug: crate::aug_args::AugArgs,
    /// A named recipe: fills the flags this command line leaves unset (see --help of each).
    #[arg(long, value_enum)]
    pub preset: Option<crate::preset::Preset>,
    /// Set by `preset::resolve`: a preset needs the parser's matches (which flags were given),
    /// so a caller that parsed these arguments itself must resolve them before `run`.
    #[arg(skip)]
    pub preset_applied: bool,
    /// Splits whose images are pretrained on (labels ignored), comma-separated.
    #[arg(long, default_value = "unlabeled,train")]
    pub splits: String,
    /// Run directory: encoder.safetensors, metrics.jsonl, config.json, checkpoints/.
    #[arg(long)]
    pub out: PathBuf,
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
    /// Base learning rate for a batch of 256; the run uses lr × batch/256.
    #[arg(long, default_value_t = 0.06)]
    pub lr: f64,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub sgd_momentum: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Keep the lr constant instead of the cosine decay.
    #[arg(long)]
    pub no_cosine: bool,
    /// Queue size K (negatives); must be a multiple of the keys per step.
    #[arg(long, default_value_t = 2048)]
    pub queue_size: i64,
    /// Key encoder momentum m.
    #[arg(long, default_value_t = 0.99)]
    pub moco_momentum: f64,
    /// Softmax temperature T of InfoNCE.
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f64,
    /// Shuffle BN on one device: BatchNorm statistics over this many sub-batches.
    #[arg(long, default_value_t = 8)]
    pub bn_splits: i64,
    /// Symmetric loss (both views as queries; twice the keys per step).
    #[arg(long)]
    pub symmetric: bool,
    /// BatchNorm in the projection MLP (MoCo v3's projector: Linear-BN-ReLU-Linear-BN), split
    /// for shuffle BN like the backbone's. It removes the embeddings' common offset, through
    /// which a plain MLP can tell fresh keys from queued ones by the encoder's drift.
    #[arg(long)]
    pub head_bn: bool,
    /// Mixed precision on CUDA.
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
    /// Train in float64 (CPU, no --amp, no kNN monitor): a check mode whose numbers do not depend
    /// on the CPU's float path, for comparing two runs of the same algorithm over many steps.
    /// The encoder file and checkpoints are still written in float32.
    #[arg(long)]
    pub float64: bool,
}

/// channels_last: the default on CUDA, asked for on the CPU.
fn uses_channels_last(a: &PretrainArgs, device: Device) -> bool {
    a.channels_last || (device.is_cuda() && !a.no_channels_last)
}

/// The floating-point kind of the variables, views and loss.
fn compute_kind(a: &PretrainArgs) -> Kind {
    if a.float64 {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// What a resume must agree on: everything that changes the numbers of a step.
fn algorithm_config(a: &PretrainArgs, aug: &AugConfig, total: u64, n_images: usize) -> Value {
    let mut config = json!({
        "data": a.io.data.display().to_string(),
        "splits": a.splits,
        "images": n_images,
        "arch": a.arch.name(),
        "total_steps": total,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "weight_decay": a.weight_decay,
        "sgd_momentum": a.sgd_momentum,
        "warmup_steps": a.warmup_steps,
        "cosine": !a.no_cosine,
        "queue_size": a.queue_size,
        "moco_momentum": a.moco_momentum,
        "temperature": a.temperature,
        "bn_splits": a.bn_splits,
        "symmetric": a.symmetric,
        "amp": a.amp,
        "size": a.io.size,
        "seed": a.seed,
        "augmentation": aug,
    });
    // Only when set, so that the runs written before these flags existed still resume.
    if a.float64 {
        config["float64"] = json!(true);
    }
    if a.head_bn {
        config["head_bn"] = json!(true);
    }
    config
}

pub struct KnnMonitor {
    pub bank: DecodedSplit,
    pub query: DecodedSplit,
}

impl KnnMonitor {
    pub fn evaluate(&self, backbone: &models_tch::ResNet, device: Device) -> Result<f64> {
        let r = knn::evaluate(
            backbone,
            &self.bank,
            &self.query,
            (200, 0.1),
            device,
            256,
            false,
        )?;
        Ok(r.top1)
    }
}

fn params_finite(opt: &Sgd) -> bool {
    tch::no_grad(|| {
        opt.params
            .iter()
            .all(|(_, p)| bool::try_from(p.isfinite().all()).unwrap_or(false))
    })
}

/// BN running statistics are per rank (each sees its own groups); their mean over ranks is
/// exactly what one process with all the groups holds (the update is linear), so checkpoints
/// store the mean and every rank continues from it.
fn average_buffers(d: &Dist, moco: &Moco) -> Result<()> {
    for (_, mut t) in moco.variables() {
        if !t.requires_grad() {
            d.average(&mut t)?;
        }
    }
    Ok(())
}

/// `pretrain --nproc N`: N copies of this command as ranks 0..N on this machine (torchrun's
/// variables, a free loopback port). Rank 0's stdout is this process's; when a rank fails the
/// others are stopped and its exit is reported.
pub fn launch_local(a: &PretrainArgs) -> Result<()> {
    use std::process::{Command, Stdio};
    if DistEnv::from_env()?.is_some() {
        bail!(
            "--nproc {}: WORLD_SIZE is already set (launched by torchrun?); use one launcher",
            a.nproc
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("--nproc: no free loopback port")?
        .port();
    let exe = std::env::current_exe().context("--nproc: cannot find this executable")?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut skip = false;
    for arg in std::env::args_os().skip(1) {
        let s = arg.to_string_lossy();
        if skip {
            skip = false;
        } else if s == "--nproc" {
            skip = true;
        } else if !s.starts_with("--nproc=") {
            args.push(arg);
        }
    }
    let mut children = Vec::new();
    for rank in 0..a.nproc {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", a.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(if rank == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .with_context(|| format!("--nproc: cannot start rank {rank}"))?;
        children.push(Some(child));
    }
    let mut failed: Option<String> = None;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                *slot = None;
                if !status.success() && failed.is_none() {
                    failed = Some(format!("rank {rank} of {} exited with {status}", a.nproc));
                }
            }
        }
        if failed.is_some() {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        Some(f) => bail!("pretrain --nproc: {f}; the other ranks were stopped"),
        None => Ok(()),
    }
}

fn check_writable(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create", out.display()))?;
    models::weights::check_dir_writable(out)
        .with_context(|| format!("--out {}: not writable", out.display()))
}

pub fn run(a: &PretrainArgs) -> Result<Value> {
    if let (Some(p), false) = (a.preset, a.preset_applied) {
        bail!("--preset {p:?}: not applied (call trainer::preset::resolve with the arguments' matches)");
    }
    let mut device = a.io.setup()?;
    let env = match DistEnv::from_env()? {
        None if a.dist_backend != DistBackend::Auto => Some(DistEnv::single()),
        env => env,
    };
    if let (Device::Cuda(0), Some(env)) = (device, &env) {
        device = Device::Cuda(env.local_rank);
    }
    let dist = match &env {
        Some(env) => Some(Rc::new(Dist::init(
            env,
            a.dist_backend,
            device,
            Duration::from_secs(a.dist_timeout),
        )?)),
        None => None,
    };
    let (rank, world) = dist.as_ref().map_or((0, 1), |d| (d.rank, d.world));
    let lead = rank == 0;
    if a.amp != Amp::Off && !device.is_cuda() {
        bail!(
            "--amp {:?}: mixed precision runs on CUDA only (use --amp off on CPU)",
            a.amp
        );
    }
    if a.float64 && (a.amp != Amp::Off || device.is_cuda() || !a.no_knn) {
        bail!("--float64 is a CPU check mode: use it with --device cpu, --amp off and --no-knn");
    }
    if a.amp != Amp::Off {
        crate::amp::set_cuda_dtype(a.amp == Amp::Bf16)?;
    }
    let aug_cfg = a.aug.config(a.io.size)?;
    if a.batch_size == 0 || a.bn_splits < 1 || a.batch_size as i64 % a.bn_splits != 0 {
        bail!(
            "--batch-size {} must be a positive multiple of --bn-splits {}",
            a.batch_size,
            a.bn_splits
        );
    }
    if !a.batch_size.is_multiple_of(world) || a.bn_splits % world as i64 != 0 {
        bail!(
            "--batch-size {} and --bn-splits {} must be multiples of the world size {world} \
             (each rank takes an equal share of the batch and of its BN groups)",
            a.batch_size,
            a.bn_splits
        );
    }
    let keys_per_step = a.batch_size as i64 * if a.symmetric { 2 } else { 1 };
    if a.queue_size <= 0 || a.queue_size % keys_per_step != 0 {
        bail!(
            "--queue-size {} must be a positive multiple of the keys per step ({keys_per_step})",
            a.queue_size
        );
    }
    if lead {
        check_writable(&a.out)?;
    }
    let progress = !a.quiet && !a.json && lead;
    let cache_dir =
        a.io.cache_dir
            .clone()
            .unwrap_or_else(data::default_cache_dir);
    let splits = data::parse_splits(&a.splits).map_err(|e| anyhow::anyhow!("--splits: {e}"))?;
    // The lead rank builds the decoded stores; the others open them once they exist.
    let open_bank = || {
        data::open_splits(
            &a.io.data,
            &splits,
            a.io.format,
            a.io.size,
            &cache_dir,
            progress,
        )
    };
    let first = if lead { Some(open_bank()) } else { None };
    if let Some(d) = &dist {
        d.barrier()?;
    }
    let bank = ImageBank::new(match first {
        Some(r) => r?,
        None => open_bank()?,
    });
    let n = bank.len();
    if a.batch_size > n {
        bail!(
            "--batch-size {} is larger than the {n} pretraining images",
            a.batch_size
        );
    }
    let steps_per_epoch = (n / a.batch_size) as u64;
    let total = a.steps.unwrap_or(a.epochs * steps_per_epoch);
    if total == 0 {
        bail!("--steps/--epochs: nothing to train");
    }

    let knn = if a.no_knn || !lead {
        None
    } else {
        let root = a.knn_data.as_ref().unwrap_or(&a.io.data);
        let open = |s: Split| {
            data::open_splits(root, &[s], a.io.format, a.io.size, &cache_dir, progress)
                .map(|mut v| v.remove(0))
        };
        match (open(a.knn_bank_split), open(a.knn_query_split)) {
            (Ok(b), Ok(q)) if b.is_labeled() && q.is_labeled() => {
                Some(KnnMonitor { bank: b, query: q })
            }
            (Ok(_), Ok(_)) if a.knn_data.is_some() => bail!(
                "--knn-data {}: the kNN splits `{}`/`{}` have no labels",
                root.display(),
                a.knn_bank_split.name(),
                a.knn_query_split.name()
            ),
            (Err(e), _) | (_, Err(e)) if a.knn_data.is_some() => return Err(e),
            _ => {
                eprintln!(
                    "pretrain: no labeled kNN splits in {}; kNN monitor off",
                    root.display()
                );
                None
            }
        }
    };

    let algo = algorithm_config(a, &aug_cfg, total, n);
    let config = json!({
        "command": "pretrain",
        "algorithm": algo,
        "run": {
            "threads": tch::get_num_threads(),
            "device": format!("{device:?}"),
            "dist_backend": dist.as_ref().map(|d| d.backend.name()),
            "channels_last": uses_channels_last(a, device),
            "preset": a.preset,
            "checkpoint_every": a.checkpoint_every,
            "knn_every": a.knn_every,
            "log_every": a.log_every,
            "out": a.out.display().to_string(),
        },
        "preprocess": Preprocess::default(),
        "version": env!("CARGO_PKG_VERSION"),
    });

    tch::manual_seed(a.seed as i64);
    let cfg = MocoConfig {
        arch: a.arch,
        queue_size: a.queue_size,
        momentum: a.moco_momentum,
        temperature: a.temperature,
        bn_splits: a.bn_splits / world as i64,
        symmetric: a.symmetric,
        head_bn: a.head_bn,
        fault: Default::default(),
    };
    let mut moco = Moco::new(cfg, device);
    let kind = compute_kind(a);
    moco.set_kind(kind);
    if let Some(d) = &dist {
        // Every rank starts from rank 0's weights and queue, as DDP does.
        // Collectives pair up by position: `Moco::variables` has one order on every rank.
        for (_, mut t) in moco.variables() {
            tch::no_grad(|| d.broadcast(&mut t, 0))?;
        }
        d.broadcast(&mut moco.queue, 0)?;
        moco.dist = Some(d.clone());
    }
    let mut opt = Sgd::new(moco.parameters(), a.sgd_momentum, a.weight_decay);
    let schedule = Schedule {
        base_lr: a.lr,
        batch_size: a.batch_size,
        total_steps: total,
        warmup_steps: a.warmup_steps,
        cosine: !a.no_cosine,
    };
    let mut scaler = (a.amp == Amp::Fp16).then(LossScaler::default);

    let mut start = 0u64;
    if a.resume {
        if let Some((path, map, state)) = checkpoint::latest_good(&a.out) {
            if state.world_size != world {
                bail!(
                    "--resume: {} was written by {} rank(s), this run has {world}; resume \
                     with the same world size",
                    path.display(),
                    state.world_size
                );
            }
            if state.config != algo {
                bail!(
                    "--resume: {} was written by a run with another configuration (arch, data, \
                     batch, schedule or seed differ); use another --out",
                    path.display()
                );
            }
            checkpoint::restore(&path, &map, &state, &mut moco, &mut opt)?;
            scaler = state.scaler.clone();
            start = state.step;
            if lead {
                eprintln!("pretrain: resumed from {} (step {start})", path.display());
            }
        }
    }
    let channels_last = uses_channels_last(a, device);
    if channels_last {
        for (_, mut t) in moco.variables() {
            crate::amp::make_channels_last(&mut t)?;
        }
    }
    let mut log = if lead {
        models::weights::write_atomic(
            &a.out.join("config.json"),
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        Some(MetricsLog::open(&a.out.join("metrics.jsonl"), Some(start))?)
    } else {
        None
    };

    let aug = Augmenter::new(aug_cfg, &Preprocess::default(), device);
    let bar = crate::progress::bar(total, "pretrain", progress);
    bar.set_position(start);
    let t0 = Instant::now();
    let mut order: (u64, Vec<i64>) = (u64::MAX, Vec::new());
    let mut loss_sum = Tensor::zeros([], (kind, device));
    let mut interval = (0u64, Instant::now());
    let mut last_loss = f64::NAN;
    let mut last_knn = None;
    let save = |moco: &Moco, opt: &Sgd, scaler: &Option<LossScaler>, step: u64| {
        let state = State {
            step,
            ptr: moco.ptr,
            scaler: scaler.clone(),
            config: algo.clone(),
            world_size: world,
        };
        checkpoint::save(&a.out, moco, opt, &state)
    };
    // This rank's share of each global batch (strided: see `dist::share`).
    let mine = |batch: &[_]| crate::dist::share(batch, rank, world);

    for step in start..total {
        crate::crash_points::at_step(step);
        let epoch = step / steps_per_epoch;
        if order.0 != epoch {
            order = (
                epoch,
                permutation(&mut stream(a.seed, Purpose::EpochOrder, epoch), n),
            );
        }
        let pos = (step % steps_per_epoch) as usize * a.batch_size;
        let idx: Vec<usize> = mine(&order.1[pos..pos + a.batch_size])
            .iter()
            .map(|&i| i as usize)
            .collect();
        let images = bank.batch(&idx).to_device(device);
        // Every rank draws the whole batch's views and keeps its share: any world size sees the
        // same augmentations.
        let mut rng = stream(a.seed, Purpose::Augment, step);
        let s = a.io.size;
        let p1 = crate::dist::share(&aug.draw(&mut rng, a.batch_size, s, s), rank, world);
        let p2 = crate::dist::share(&aug.draw(&mut rng, a.batch_size, s, s), rank, world);
        let (mut im1, mut im2) = (
            aug.views(&images, &p1).to_kind(kind),
            aug.views(&images, &p2).to_kind(kind),
        );
        if channels_last {
            crate::amp::make_channels_last(&mut im1)?;
            crate::amp::make_channels_last(&mut im2)?;
        }
        let mut prng = stream(a.seed, Purpose::ShuffleBn, step);
        let perms: Vec<Vec<i64>> = (0..if a.symmetric { 2 } else { 1 })
            .map(|_| permutation(&mut prng, a.batch_size))
            .collect();
        let lr = schedule.lr(step);

        opt.zero_grad();
        let out = tch::autocast(a.amp != Amp::Off, || moco.forward(&im1, &im2, &perms))?;
        let loss = out.loss.to_kind(kind);
        let scale = scaler.as_ref().map_or(1.0, |sc| sc.scale);
        (&loss * scale).backward();
        if let Some(d) = &dist {
            // The global batch's mean loss: the mean of the ranks' gradients.
            d.average_gradients(opt.params.iter().map(|(_, p)| p))?;
        }
        let take = match &mut scaler {
            Some(sc) => sc.unscale_and_check(&mut opt),
            None => true,
        };
        if take {
            opt.step(lr);
        }
        let done = step + 1;
        let end_of_epoch = done.is_multiple_of(steps_per_epoch);
        let checkpoint_now =
            done == total || (a.checkpoint_every > 0 && done.is_multiple_of(a.checkpoint_every));
        let log_now = done % a.log_every.max(1) == 0 || checkpoint_now || end_of_epoch;
        let by_age = log_now.then(|| moco.similarity_by_age(&out.queries, keys_per_step));
        moco.enqueue(&out.keys.to_kind(kind));
        loss_sum += loss.detach();
        interval.0 += 1;

        if let Some((newest, oldest)) = by_age {
            // The only host synchronisation: the mean loss of the interval, checked for NaN/inf
            // before anything is logged or checkpointed.
            if let Some(d) = &dist {
                d.average(&mut loss_sum)?;
            }
            let mean = loss_sum.double_value(&[]) / interval.0 as f64;
            if !mean.is_finite() {
                bar.abandon();
                bail!(
                    "pretrain: the loss became {mean} between steps {} and {done} (lr {lr:.4}); \
                     stopped. The last good checkpoint is kept in {}",
                    done - interval.0,
                    checkpoint::dir(&a.out).display()
                );
            }
            let secs = interval.1.elapsed().as_secs_f64();
            let ips = (interval.0 as usize * a.batch_size) as f64 / secs.max(1e-9);
            last_loss = mean;
            let mut rec = json!({
                "step": done, "epoch": done as f64 / steps_per_epoch as f64, "loss": mean,
                "lr": lr, "images_per_sec": ips, "wall_time": t0.elapsed().as_secs_f64(),
            });
            let knn_due = end_of_epoch
                && a.knn_every > 0
                && (done / steps_per_epoch).is_multiple_of(a.knn_every);
            if let Some(m) = knn.as_ref().filter(|_| knn_due || done == total) {
                // Only the lead rank has a monitor; the others wait in their next collective.
                let top1 = m.evaluate(&moco.q.backbone, device)?;
                rec["knn_top1"] = json!(top1);
                last_knn = Some(top1);
            }
            rec["neg_sim_newest"] = json!(newest);
            rec["neg_sim_oldest"] = json!(oldest);
            if let Some(sc) = &scaler {
                rec["loss_scale"] = json!(sc.scale);
            }
            if let Some(log) = log.as_mut() {
                log.write(&rec)?;
            }
            bar.set_message(format!("pretrain loss {mean:.4} lr {lr:.4} {ips:.1} img/s"));
            loss_sum = Tensor::zeros([], (kind, device));
            interval = (0, Instant::now());
            if checkpoint_now {
                // The loss checks the weights a step behind: check this step's result too.
                if !params_finite(&opt) {
                    bar.abandon();
                    bail!(
                        "pretrain: the weights became NaN/inf at step {done} (lr {lr:.4}); \
                         stopped. The last good checkpoint is kept in {}",
                        checkpoint::dir(&a.out).display()
                    );
                }
                if let Some(d) = &dist {
                    average_buffers(d, &moco)?;
                }
                if lead {
                    save(&moco, &opt, &scaler, done)?;
                }
            }
        }
        bar.set_position(done);
    }
    bar.finish_and_clear();
    if let Some(d) = &dist {
        // Nobody leaves while a peer may still be in a collective.
        d.barrier()?;
        if !lead {
            return Ok(json!({"rank": rank, "steps": total}));
        }
    }

    let backbone = to_tensor_map(&moco.vs_q.variables(), |name| !name.starts_with("fc."));
    let mut encoder = backbone;
    encoder
        .metadata
        .insert("moco.arch".into(), a.arch.name().into());
    encoder.save(&a.out.join("encoder.safetensors"))?;
    let _ = crate::plot::curves(&a.out.join("metrics.jsonl"), &a.out.join("curves.png"));
    let result = json!({
        "encoder": a.out.join("encoder.safetensors").display().to_string(),
        "steps": total,
        "loss": last_loss,
        "knn_top1": last_knn,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    eprintln!(
        "pretrain: {total} steps, final loss {last_loss:.4}{} → {}",
        last_knn
            .map(|k| format!(", kNN top-1 {:.1} %", 100.0 * k))
            .unwrap_or_default(),
        a.out.join("encoder.safetensors").display()
    );
    Ok(result)
}
