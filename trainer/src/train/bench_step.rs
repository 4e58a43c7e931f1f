//! `moco-train bench-step`: what one training step of a run costs — warm-up steps, then timed
//! steps of the real loop (loader, augmentation, method, optimizer) with the device synchronised
//! at both ends — as two-view images/s, host milliseconds per step, the ATen ops and host
//! synchronisations per step, and peak memory. A bench command: it reports, it never asserts.

use std::time::Instant;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Trainer;
use crate::config::PretrainConfig;
use crate::runtime::counters::{self, OpCounter};
use crate::runtime::stop::StopFlag;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchStepConfig {
    pub pretrain: PretrainConfig,
    pub warmup: u64,
    pub timed: u64,
    /// Count the ops: a RecordFunction callback on every op, which slows the steps down, so
    /// the timed steps run again without it.
    pub count: bool,
    /// The augmentation's batched GPU path on any device (`--gpu-path`).
    pub gpu_path: bool,
    /// Print the top-level ops by name (per step) on stderr.
    pub by_name: bool,
}

pub fn run(cfg: &BenchStepConfig) -> Result<Value> {
    if cfg.timed == 0 {
        bail!("--timed: at least one timed step");
    }
    let mut pre = cfg.pretrain.clone();
    // With --cuda-graph the warm-up holds the graph's eager steps and its capture.
    let warmup = match pre.run.cuda_graph {
        true => cfg.warmup.max(super::graph::WARMUP_STEPS + 1),
        false => cfg.warmup,
    };
    pre.length = crate::config::Length::Steps(warmup + 2 * cfg.timed);
    pre.knn = None;
    pre.run.resume = false;
    pre.run.device_path = cfg.gpu_path;
    let mut trainer = Trainer::prepare(&pre, StopFlag::default())?;
    let device = trainer.device;
    for step in 0..warmup {
        trainer.step(step, false)?;
    }
    counters::synchronize(device);
    let _ = counters::peak_bytes(device);
    let _ = counters::take_syncs();
    let counted = if cfg.count {
        let _counter = OpCounter::start(cfg.by_name)?;
        for step in warmup..warmup + cfg.timed {
            trainer.step(step, false)?;
        }
        counters::synchronize(device);
        for (count, name) in OpCounter::names() {
            eprintln!("bench-step: {:8.1} {name}", count as f64 / cfg.timed as f64);
        }
        Some(OpCounter::take())
    } else {
        None
    };
    let syncs = counters::take_syncs();
    let from = warmup + cfg.timed;
    let (mut host, t0) = (0.0, Instant::now());
    for step in from..from + cfg.timed {
        let t = Instant::now();
        trainer.step(step, false)?;
        host += t.elapsed().as_secs_f64();
    }
    counters::synchronize(device);
    let secs = t0.elapsed().as_secs_f64();
    let n = cfg.timed as f64;
    let batch = pre.batch_size as f64;
    let per_step = |c: u64| c as f64 / n;
    let result = json!({
        "method": pre.method.name, "arch": pre.arch.name(), "batch_size": pre.batch_size,
        "crop": pre.augmentation.size, "amp": pre.amp, "float64": pre.float64,
        "augmentation_path": if cfg.gpu_path || device.is_cuda() { "batched" } else { "cpu" },
        "device": format!("{device:?}"), "threads": tch::get_num_threads(),
        "warmup_steps": warmup, "timed_steps": cfg.timed, "cuda_graph": pre.run.cuda_graph,
        "two_view_images_per_sec": n * batch / secs,
        "ms_per_step": 1e3 * secs / n,
        "host_ms_per_step": 1e3 * host / n,
        "ops_per_step": counted.map(|(top, _)| per_step(top)),
        "nested_ops_per_step": counted.map(|(_, all)| per_step(all)),
        "syncs_per_step": cfg.count.then(|| per_step(syncs)),
        "peak_bytes": counters::peak_bytes(device),
    });
    eprintln!(
        "bench-step: {} {} batch {} crop {} ({:?}): {:.1} two-view images/s, {:.1} ms/step \
         ({:.1} ms on the host){}",
        pre.method.name,
        pre.arch.name(),
        pre.batch_size,
        pre.augmentation.size,
        device,
        n * batch / secs,
        1e3 * secs / n,
        1e3 * host / n,
        counted.map_or(String::new(), |(top, all)| format!(
            "; {:.0} ops/step ({:.0} nested), {:.1} syncs/step",
            per_step(top),
            per_step(all),
            per_step(syncs)
        ))
    );
    Ok(result)
}
