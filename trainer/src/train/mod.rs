//! The training core of `pretrain`: it owns the loop — data order per rank, views, the step,
//! logging, the NaN stop, checkpoints and the kNN monitor — over any [`Method`], and saves the
//! method's backbone with torchvision names at the end.

pub mod bench_data;
pub mod bench_step;
pub mod checkpoint;
pub mod compare;
pub mod data;
pub mod graph;
pub mod launch;
pub mod monitor;
mod setup;
pub mod step;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::ProgressBar;
use models::Preprocess;
use models_tch::to_tensor_map;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::config::{Algorithm, PretrainConfig};
use crate::methods::{Method, StepCtx};
use crate::nn::amp::Autocast;
use crate::nn::optim::{LossScaler, Lr, Optimizer, Schedule};
use crate::observe::metrics::MetricsLog;
use crate::runtime::dist::Dist;
use crate::runtime::stop::{Preempted, StopFlag};
use checkpoint::State;
use data::{Prefetch, RankShare, StepBatches, ViewMaker};
use monitor::KnnMonitor;
use setup::{
    build_state, check_device, connect, open_batches, open_log, save_init, set_memory_format,
    Started,
};
use step::{train_step, StepState};

pub use setup::set_kind;

/// `moco-train pretrain` with a decided configuration: the result JSON of SPEC. When `stop` is
/// asked for, the run saves a checkpoint after the step it is in and ends with [`Preempted`].
pub fn run(cfg: &PretrainConfig, stop: StopFlag) -> Result<Value> {
    if let Some(path) = &cfg.run.save_init {
        return save_init(cfg, path);
    }
    let mut trainer = Trainer::prepare(cfg, stop)?;
    trainer.fit()?;
    trainer.finish()
}

/// BN running statistics are per rank (each sees its own groups); their mean over ranks is
/// exactly what one process with all the groups holds (the update is linear), so checkpoints
/// store the mean and every rank continues from it.
fn average_buffers(d: &Dist, method: &dyn Method) -> Result<()> {
    for (_, mut t) in method.networks() {
        if !t.requires_grad() {
            d.average(&mut t)?;
        }
    }
    Ok(())
}

fn params_finite(opt: &Optimizer) -> bool {
    tch::no_grad(|| {
        opt.params
            .iter()
            .all(|(_, p)| crate::runtime::counters::flag(&p.isfinite().all()))
    })
}

/// The steps since the last log line.
struct Interval {
    loss_sum: Tensor,
    steps: u64,
    since: Instant,
}

impl Interval {
    fn new(kind: Kind, device: Device) -> Self {
        Interval {
            loss_sum: Tensor::zeros([], (kind, device)),
            steps: 0,
            since: Instant::now(),
        }
    }
}

pub struct Trainer {
    cfg: PretrainConfig,
    algo: Algorithm,
    device: Device,
    kind: Kind,
    autocast: Option<Autocast>,
    dist: Option<Rc<Dist>>,
    method: Box<dyn Method>,
    opt: Optimizer,
    scaler: Option<LossScaler>,
    schedule: Schedule,
    batches: StepBatches,
    loader: Prefetch,
    views: ViewMaker,
    monitor: Option<KnnMonitor>,
    log: Option<MetricsLog>,
    bar: ProgressBar,
    start: u64,
    /// The step of the newest checkpoint this process wrote or resumed from.
    saved: u64,
    /// The run directory is this process's while the lead rank holds it.
    _out_lock: Option<atomic_io::lock::FileLock>,
    stop: StopFlag,
    t0: Instant,
    last_loss: f64,
    last_knn: Option<f64>,
    /// `--cuda-graph`: the step captured once and replayed.
    graph: Option<graph::GraphStep>,
}

impl Trainer {
    /// Everything before the first step: device and ranks, data, monitor, method and optimizer,
    /// the resume, config.json and the metrics log.
    pub fn prepare(cfg: &PretrainConfig, stop: StopFlag) -> Result<Trainer> {
        let (device, dist) = connect(cfg)?;
        let share = dist.as_ref().map_or(RankShare::ONE, |d| RankShare {
            rank: d.rank,
            world: d.world,
        });
        let lead = share.rank == 0;
        let autocast = check_device(cfg, device)?;
        cfg.validate(share.world)?;
        let out_lock = lead
            .then(|| crate::runtime::run_dir::claim(&cfg.run.out))
            .transpose()?;
        let progress = cfg.run.progress && lead;
        let (batches, total) = open_batches(cfg, dist.as_deref(), share, progress)?;
        let monitor = match (&cfg.knn, lead) {
            (Some(k), true) => KnnMonitor::open(k, &cfg.data, progress)?,
            _ => None,
        };
        let mut algo = cfg.algorithm(batches.images(), total);
        let Started {
            method,
            opt,
            scaler,
            start,
        } = build_state(cfg, &mut algo, device, dist.as_ref(), share)?;
        let kind = if cfg.float64 {
            Kind::Double
        } else {
            Kind::Float
        };
        let channels_last = set_memory_format(cfg, method.as_ref(), device)?;
        let log = match lead {
            true => Some(open_log(cfg, &algo, device, dist.as_deref(), start)?),
            false => None,
        };
        let mut views = ViewMaker::new(
            cfg.augmentation.clone(),
            device,
            (cfg.seed, cfg.batch_size, cfg.data.size),
            (share, total),
            (kind, channels_last),
        );
        if cfg.run.device_path {
            views.use_batched_path();
        }
        let schedule = Schedule {
            base_lr: cfg.optim.lr,
            batch_size: cfg.batch_size,
            total_steps: total,
            warmup_steps: cfg.optim.warmup_steps,
            cosine: cfg.optim.cosine,
        };
        let bar = crate::runtime::progress::bar(total, "pretrain", progress);
        bar.set_position(start);
        let mut trainer = Trainer {
            cfg: cfg.clone(),
            algo,
            device,
            kind,
            autocast,
            dist,
            method,
            opt,
            scaler,
            schedule,
            loader: Prefetch::new(batches.clone(), device),
            batches,
            views,
            monitor,
            log,
            bar,
            start,
            saved: start,
            _out_lock: out_lock,
            stop,
            t0: Instant::now(),
            last_loss: f64::NAN,
            last_knn: None,
            graph: None,
        };
        if cfg.run.cuda_graph {
            trainer.graph = Some(graph::GraphStep::new(&mut *trainer.method, device)?);
        }
        trainer.figures(start, true)?;
        Ok(trainer)
    }

    /// The run's figures in TensorBoard (lead rank, when it writes there): the augmentation
    /// preview of 8 images spread over the set, and conv1's maps of the first of them.
    fn figures(&mut self, step: u64, preview: bool) -> Result<()> {
        let Some(tb) = self.log.as_mut().and_then(MetricsLog::tensorboard) else {
            return Ok(());
        };
        let total = self.batches.images();
        let n = total.min(8);
        let idx: Vec<usize> = (0..n).map(|i| i * total / n).collect();
        let images = self.batches.pick(&idx);
        if preview {
            let c = &self.cfg;
            let tiles =
                crate::observe::preview::view_tiles(&images, &c.augmentation, c.seed, c.data.size);
            tb.image(
                "augmentation",
                step,
                &crate::observe::plot::grid_image(
                    &tiles,
                    crate::observe::preview::tile_columns(&c.augmentation),
                )?,
            )?;
        }
        let x = crate::eval::features::eval_input(
            &images.narrow(0, 0, 1),
            &Preprocess::default(),
            self.device,
        )
        .to_kind(self.kind);
        let tiles = crate::eval::feature_maps::map_tiles(self.method.backbone(), &x, 64, 2)?;
        tb.image(
            "conv1_maps",
            step,
            &crate::observe::plot::grid_image(&tiles, 8)?,
        )
    }

    fn lead(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.rank == 0)
    }

    /// The steps from the resumed position to the end.
    pub fn fit(&mut self) -> Result<()> {
        let total = self.algo.total_steps;
        let per_epoch = self.batches.steps_per_epoch();
        let mut interval = Interval::new(self.kind, self.device);
        for step in self.start..total {
            if self.stop_agreed(step)? {
                return self.stop_before(step, &mut interval);
            }
            crate::runtime::faults::at_step(step);
            let lr = self.schedule.lr(step);
            let done = step + 1;
            let end_of_epoch = done.is_multiple_of(per_epoch);
            let every = self.cfg.run.checkpoint_every;
            let checkpoint_now = done == total || (every > 0 && done.is_multiple_of(every));
            let log_now =
                done % self.cfg.run.log_every.max(1) == 0 || checkpoint_now || end_of_epoch;
            let out = self.step(step, log_now)?;
            interval.loss_sum += out.loss;
            interval.steps += 1;
            if log_now {
                let epoch_done = end_of_epoch.then(|| done / per_epoch);
                self.log_interval(&mut interval, done, lr, epoch_done, &out.fields)?;
                if checkpoint_now {
                    self.checkpoint(done, lr)?;
                }
            }
            self.bar.set_position(done);
        }
        self.bar.finish_and_clear();
        Ok(())
    }

    /// One optimizer step on the views of `step`'s batch (`log`: the method's metrics too).
    fn step(&mut self, step: u64, log: bool) -> Result<step::StepOut> {
        let images = self.loader.images_of(step)?;
        let views = self.views.views(&images, step)?;
        let ctx = StepCtx {
            step,
            total_steps: self.algo.total_steps,
            seed: self.cfg.seed,
        };
        let st = StepState {
            opt: &mut self.opt,
            scaler: &mut self.scaler,
            dist: self.dist.as_deref(),
            autocast: self.autocast,
            kind: self.kind,
        };
        let lr = self.schedule.lr(step);
        match &mut self.graph {
            Some(g) => g.step(&mut *self.method, st, &views, &ctx, lr),
            None => train_step(&mut *self.method, st, &views, &ctx, Lr::Value(lr), log),
        }
    }

    /// Whether to stop before `step`: asked for on this rank or, in a group, on any. A group
    /// agrees only where the loop already waits for the device and the ranks (after a logged
    /// step), so that the stop adds no synchronisation to the steps in between; every rank then
    /// stops at the same step, at most `--log-every` steps after the signal.
    fn stop_agreed(&self, step: u64) -> Result<bool> {
        let here = self.stop.asked();
        let Some(d) = &self.dist else {
            return Ok(here);
        };
        if step == self.start || !step.is_multiple_of(self.cfg.run.log_every.max(1)) {
            return Ok(false);
        }
        let mut any = Tensor::from(f64::from(u8::from(here))).to_device(self.device);
        d.average(&mut any)?;
        Ok(crate::runtime::counters::scalar(&any) > 0.0)
    }

    /// A stop after `done` steps: the open interval logged, a checkpoint unless the newest one is
    /// of this step, and [`Preempted`] for the caller (the ranks leave together).
    fn stop_before(&mut self, done: u64, interval: &mut Interval) -> Result<()> {
        if interval.steps > 0 {
            let lr = self.schedule.lr(done - 1);
            self.log_interval(interval, done, lr, None, &[])?;
        }
        if done > self.saved {
            self.checkpoint(done, self.schedule.lr(done - 1))?;
        }
        self.bar.abandon();
        if let Some(d) = &self.dist {
            d.barrier()?;
        }
        Err(Preempted {
            cause: self.stop.cause(),
            saved: (self.saved > 0).then(|| (done, checkpoint::file_for(&self.cfg.run.out, done))),
        }
        .into())
    }

    /// The interval's mean loss (over ranks: the only host synchronisation), checked for NaN/inf
    /// before anything is logged or checkpointed; the kNN monitor when due; one metrics line.
    fn log_interval(
        &mut self,
        interval: &mut Interval,
        done: u64,
        lr: f64,
        epoch_done: Option<u64>,
        fields: &[(&'static str, f64)],
    ) -> Result<()> {
        if let Some(d) = &self.dist {
            d.average(&mut interval.loss_sum)?;
        }
        let mean = crate::runtime::counters::scalar(&interval.loss_sum) / interval.steps as f64;
        if !mean.is_finite() {
            self.bar.abandon();
            bail!(
                "pretrain: the loss became {mean} between steps {} and {done} (lr {lr:.4}); \
                 stopped. The last good checkpoint is kept in {}",
                done - interval.steps,
                checkpoint::dir(&self.cfg.run.out).display()
            );
        }
        let secs = interval.since.elapsed().as_secs_f64();
        let ips = (interval.steps as usize * self.cfg.batch_size) as f64 / secs.max(1e-9);
        self.last_loss = mean;
        let per_epoch = self.batches.steps_per_epoch();
        let mut rec = json!({
            "step": done, "epoch": done as f64 / per_epoch as f64, "loss": mean,
            "lr": lr, "images_per_sec": ips, "wall_time": self.t0.elapsed().as_secs_f64(),
        });
        let last = done == self.algo.total_steps;
        if let Some(m) = self.monitor.as_ref().filter(|m| m.due(epoch_done, last)) {
            // Only the lead rank has a monitor; the others wait in their next collective.
            let top1 = m.evaluate(self.method.backbone(), self.device)?;
            rec["knn_top1"] = json!(top1);
            self.last_knn = Some(top1);
        }
        if last || rec.get("knn_top1").is_some() {
            self.figures(done, false)?;
        }
        for (k, v) in fields {
            rec[*k] = json!(v);
        }
        if let Some(sc) = &self.scaler {
            rec["loss_scale"] = json!(sc.scale);
        }
        if let Some(log) = self.log.as_mut() {
            log.write(&rec)?;
        }
        self.bar
            .set_message(format!("pretrain loss {mean:.4} lr {lr:.4} {ips:.1} img/s"));
        *interval = Interval::new(self.kind, self.device);
        Ok(())
    }

    /// The weights checked (the loss checks them a step behind), BN statistics averaged over
    /// ranks, and the checkpoint written by the lead rank.
    fn checkpoint(&mut self, done: u64, lr: f64) -> Result<()> {
        if !params_finite(&self.opt) {
            self.bar.abandon();
            bail!(
                "pretrain: the weights became NaN/inf at step {done} (lr {lr:.4}); stopped. The \
                 last good checkpoint is kept in {}",
                checkpoint::dir(&self.cfg.run.out).display()
            );
        }
        if let Some(d) = &self.dist {
            average_buffers(d, self.method.as_ref())?;
        }
        if self.lead() {
            let state = State {
                step: done,
                ptr: None,
                scaler: self.scaler.clone(),
                config: serde_json::to_value(&self.algo)?,
                world_size: self.dist.as_ref().map_or(1, |d| d.world),
            };
            checkpoint::save(&self.cfg.run.out, self.method.as_ref(), &self.opt, &state)?;
        }
        self.saved = done;
        Ok(())
    }

    /// After the last step: the ranks meet, and the lead saves the backbone, the curves and the
    /// result.
    pub fn finish(self) -> Result<Value> {
        let total = self.algo.total_steps;
        if let Some(d) = &self.dist {
            // Nobody leaves while a peer may still be in a collective.
            d.barrier()?;
            if !self.lead() {
                return Ok(json!({"rank": d.rank, "steps": total}));
            }
        }
        let out = &self.cfg.run.out;
        // The encoder file is float32 whatever the run computed in (SPEC); checkpoints keep the
        // float64 of the check mode.
        let vars: HashMap<String, Tensor> = self
            .method
            .backbone_variables()
            .into_iter()
            .map(|(n, t)| match t.kind() {
                Kind::Double => (n, t.to_kind(Kind::Float)),
                _ => (n, t),
            })
            .collect();
        let mut encoder = to_tensor_map(&vars, |_| true);
        encoder
            .metadata
            .insert("moco.arch".into(), self.cfg.arch.name().into());
        encoder.save(&out.join("encoder.safetensors"))?;
        let _ = crate::observe::plot::curves(&out.join("metrics.jsonl"), &out.join("curves.png"));
        eprintln!(
            "pretrain: {total} steps, final loss {:.4}{} → {}",
            self.last_loss,
            self.last_knn
                .map(|k| format!(", kNN top-1 {:.1} %", 100.0 * k))
                .unwrap_or_default(),
            out.join("encoder.safetensors").display()
        );
        Ok(json!({
            "encoder": out.join("encoder.safetensors").display().to_string(),
            "steps": total,
            "loss": self.last_loss,
            "knn_top1": self.last_knn,
            "seconds": self.t0.elapsed().as_secs_f64(),
        }))
    }
}
