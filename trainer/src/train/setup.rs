//! Everything before the first step, for [`super::Trainer::prepare`] and `--save-init`: the
//! device and the process group, the device checks, the images and the run's length, the method
//! drawn from the seed (or `--init-from`) and brought to the newest checkpoint, config.json and
//! the metrics log.

use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use models::Preprocess;
use serde_json::{json, Value};
use tch::{Device, Kind};

use super::checkpoint::{self, State};
use super::data::{RankShare, StepBatches};
use crate::config::{Algorithm, Amp, PretrainConfig};
use crate::data::ImageBank;
use crate::methods::{self, Build, Method};
use crate::nn::amp::Autocast;
use crate::nn::optim::{LossScaler, Optimizer};
use crate::observe::metrics::MetricsLog;
use crate::runtime::dist::{Dist, DistBackend, DistEnv};

/// `--save-init`: the method drawn from the seed as a run would draw it, written to `path`.
pub(super) fn save_init(cfg: &PretrainConfig, path: &std::path::Path) -> Result<Value> {
    let device = cfg.run.compute.setup()?;
    check_device(cfg, device)?;
    cfg.validate(1)?;
    let (method, _) = build_method(cfg, device, None)?;
    let state = State {
        step: 0,
        ptr: None,
        scaler: None,
        config: json!({"method": cfg.method, "arch": cfg.arch}),
        world_size: 1,
    };
    let sha = checkpoint::save_init(path, method.as_ref(), &state)?;
    eprintln!(
        "pretrain: initial state of seed {} → {}",
        cfg.seed,
        path.display()
    );
    Ok(json!({"init": path.display().to_string(), "sha256": sha}))
}

/// The device and, under torchrun's variables or `--dist-backend`, the process group.
pub(super) fn connect(cfg: &PretrainConfig) -> Result<(Device, Option<Rc<Dist>>)> {
    let mut device = cfg.run.compute.setup()?;
    let env = match DistEnv::from_env()? {
        None if cfg.run.dist_backend != DistBackend::Auto => Some(DistEnv::single()),
        env => env,
    };
    if let (Device::Cuda(0), Some(env)) = (device, &env) {
        let visible = tch::Cuda::device_count().max(0) as usize;
        if env.local_rank >= visible {
            bail!(
                "rank {} (LOCAL_RANK {}): only {visible} CUDA device(s) visible; start at most \
                 {visible} ranks on this machine",
                env.rank,
                env.local_rank
            );
        }
        device = Device::Cuda(env.local_rank);
    }
    if let Device::Cuda(i) = device {
        crate::nn::amp::set_cuda_device(i)?;
        // Every step has the same shapes: cuDNN times its algorithms once and keeps the fastest.
        tch::Cuda::cudnn_set_benchmark(true);
        crate::nn::amp::set_cuda_tf32(!cfg.run.no_tf32)?;
    }
    let timeout = Duration::from_secs(cfg.run.dist_timeout);
    let dist = match &env {
        Some(env) => Some(Rc::new(Dist::init(
            env,
            cfg.run.dist_backend,
            device,
            timeout,
        )?)),
        None => None,
    };
    Ok((device, dist))
}

/// The checks that need the device; the autocast `--amp` asks for on it.
pub(super) fn check_device(cfg: &PretrainConfig, device: Device) -> Result<Option<Autocast>> {
    cfg.validate_device(device)?;
    Ok(Autocast::of(cfg.amp, device))
}

/// The pretraining images; the lead rank builds the decoded stores, the others open them once
/// they exist.
pub(super) fn open_images(
    cfg: &PretrainConfig,
    dist: Option<&Dist>,
    progress: bool,
) -> Result<ImageBank> {
    let open = || cfg.data.open_all(&cfg.splits, progress);
    let lead = dist.is_none_or(|d| d.rank == 0);
    let first = lead.then(open);
    if let Some(d) = dist {
        d.barrier()?;
    }
    Ok(ImageBank::new(match first {
        Some(r) => r?,
        None => open()?,
    }))
}

/// The pretraining images in this rank's batches, and the run's length in steps.
pub(super) fn open_batches(
    cfg: &PretrainConfig,
    dist: Option<&Dist>,
    share: RankShare,
    progress: bool,
) -> Result<(StepBatches, u64)> {
    let bank = open_images(cfg, dist, progress)?;
    let images = bank.len();
    let batches = StepBatches::new(bank, cfg.seed, cfg.batch_size, share);
    let total = cfg.total_steps(images, batches.steps_per_epoch())?;
    Ok((batches, total))
}

/// What the steps update, and the step they start from.
pub(super) struct Started {
    pub(super) method: Box<dyn Method>,
    pub(super) opt: Optimizer,
    pub(super) scaler: Option<LossScaler>,
    pub(super) start: u64,
}

/// The method, its optimizer and loss scaler, drawn from the seed (or `--init-from`) and then
/// brought to the newest checkpoint on `--resume`; the step to start from.
pub(super) fn build_state(
    cfg: &PretrainConfig,
    algo: &mut Algorithm,
    device: Device,
    dist: Option<&Rc<Dist>>,
    share: RankShare,
) -> Result<Started> {
    let (mut method, mut opt) = build_method(cfg, device, dist)?;
    if let Some(path) = &cfg.init_from {
        algo.init = Some(checkpoint::load_init(path, &mut *method, algo)?);
    }
    let mut scaler = (cfg.amp == Amp::Fp16).then(LossScaler::default);
    let start = resume(cfg, algo, share, &mut *method, &mut opt, &mut scaler)?;
    Ok(Started {
        method,
        opt,
        scaler,
        start,
    })
}

/// `--resume`: the newest good checkpoint restored into `method` and `opt` when its record agrees
/// with `algo`; the step to start from (0 without one).
pub(super) fn resume(
    cfg: &PretrainConfig,
    algo: &Algorithm,
    share: RankShare,
    method: &mut dyn Method,
    opt: &mut Optimizer,
    scaler: &mut Option<LossScaler>,
) -> Result<u64> {
    if !cfg.run.resume {
        return Ok(0);
    }
    let Some((path, map, state)) = checkpoint::latest_good(&cfg.run.out) else {
        return Ok(0);
    };
    // Another world size continues the same run: the global batch, its BN groups and the
    // (seed, step) streams do not depend on it, a checkpoint holds the ranks' mean BN statistics
    // and the queue every rank shares, and `validate` has refused a world that does not divide
    // the batch and its BN groups.
    if state.world_size != share.world && share.rank == 0 {
        eprintln!(
            "pretrain: {} was written by {} rank(s); continuing on {}",
            path.display(),
            state.world_size,
            share.world
        );
    }
    let stored = state
        .algorithm()
        .with_context(|| format!("--resume: {}: unreadable run record", path.display()))?;
    let changed = algo.differences(&stored);
    if !changed.is_empty() {
        bail!(
            "--resume: {} was written by a run with another configuration ({}); use another --out",
            path.display(),
            changed.join(", ")
        );
    }
    if state.step > algo.total_steps {
        bail!(
            "--resume: {}: step {} is past the run's {} steps",
            path.display(),
            state.step,
            algo.total_steps
        );
    }
    checkpoint::restore(&path, &map, &state, method, opt)?;
    *scaler = state.scaler.clone();
    if share.rank == 0 {
        eprintln!(
            "pretrain: resumed from {} (step {})",
            path.display(),
            state.step
        );
    }
    Ok(state.step)
}

/// config.json, and the metrics log (with TensorBoard) continued from `start` (lead rank).
pub(super) fn open_log(
    cfg: &PretrainConfig,
    algo: &Algorithm,
    device: Device,
    dist: Option<&Dist>,
    start: u64,
) -> Result<MetricsLog> {
    let text = serde_json::to_string_pretty(&config_json(cfg, algo, device, dist))?;
    atomic_io::write_atomic(&cfg.run.out.join("config.json"), text.as_bytes())?;
    let log = MetricsLog::open(&cfg.run.out.join("metrics.jsonl"), Some(start))?;
    log.with_tensorboard(cfg.run.tensorboard.as_deref(), "pretrain", start)
}

/// The whole configuration as `config.json` shows it.
pub(super) fn config_json(
    cfg: &PretrainConfig,
    algo: &Algorithm,
    device: Device,
    dist: Option<&Dist>,
) -> Value {
    json!({
        "command": "pretrain",
        "algorithm": algo,
        "run": {
            "threads": tch::get_num_threads(),
            "device": format!("{device:?}"),
            "dist_backend": dist.map(|d| d.backend.name()),
            "channels_last": uses_channels_last(cfg, device),
            "preset": cfg.run.preset,
            "checkpoint_every": cfg.run.checkpoint_every,
            "knn_every": cfg.knn.as_ref().map(|k| k.every),
            "log_every": cfg.run.log_every,
            "out": cfg.run.out.display().to_string(),
        },
        "preprocess": Preprocess::default(),
        "version": env!("CARGO_PKG_VERSION"),
        "config": cfg,
        "command_line": cfg.run.command_line,
    })
}

/// channels_last: the default on CUDA, asked for on the CPU.
pub(super) fn uses_channels_last(cfg: &PretrainConfig, device: Device) -> bool {
    cfg.run.channels_last.unwrap_or(device.is_cuda())
}

/// The method's networks in channels_last when the run uses it; whether it does.
pub(super) fn set_memory_format(
    cfg: &PretrainConfig,
    method: &dyn Method,
    device: Device,
) -> Result<bool> {
    let channels_last = uses_channels_last(cfg, device);
    if channels_last {
        for (_, mut t) in method.networks() {
            crate::nn::amp::make_channels_last(&mut t)?;
        }
    }
    Ok(channels_last)
}

/// The method with its optimizer, from `cfg` (initial draws from `tch::manual_seed(seed)`).
pub(super) fn build_method(
    cfg: &PretrainConfig,
    device: Device,
    dist: Option<&Rc<Dist>>,
) -> Result<(Box<dyn Method>, Optimizer)> {
    let world = dist.map_or(1, |d| d.world);
    tch::manual_seed(cfg.seed as i64);
    let build = Build {
        arch: cfg.arch,
        device,
        bn_splits: cfg.bn_splits / world as i64,
        batch: cfg.batch_size,
        merge_views: cfg.run.device_path || device.is_cuda(),
    };
    let mut method = (methods::find(&cfg.method.name)?.build)(&cfg.method, &build)?;
    set_kind(
        method.as_ref(),
        if cfg.float64 {
            Kind::Double
        } else {
            Kind::Float
        },
    );
    if let Some(d) = dist {
        // Every rank starts from rank 0's networks, as DDP does. Collectives pair up by
        // position: `networks` has one order on every rank.
        for (_, mut t) in method.networks().into_iter().chain(method.extra_state()) {
            if t.is_floating_point() {
                tch::no_grad(|| d.broadcast(&mut t, 0))?;
            }
        }
        method.attach(d.clone());
    }
    let o = &cfg.optim;
    let opt = Optimizer::new(o.kind, method.parameters(), o.momentum, o.weight_decay);
    Ok((method, opt))
}

/// Every float variable and state tensor of the method in `kind` (float64 for the check mode);
/// BatchNorm's `num_batches_tracked` stays int64, as torchvision keeps it.
pub fn set_kind(method: &dyn Method, kind: Kind) {
    for (_, t) in method.networks().into_iter().chain(method.extra_state()) {
        if t.is_floating_point() {
            tch::no_grad(|| t.shallow_clone().set_data(&t.to_kind(kind)));
        }
    }
}
