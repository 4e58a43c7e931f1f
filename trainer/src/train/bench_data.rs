//! `moco-train bench-data`: two-view images/s of the training data path — batch gather from the
//! decoded store plus aug+ on both views — as `scripts/bench.sh data` compares with torchvision.
//! A bench command, not a timed test: it reports, it never asserts.

use std::time::Instant;

use anyhow::{bail, Result};
use datasets::layout::Split;
use models_tch::parse_device;
use serde_json::{json, Value};
use tch::{Device, Kind};

use crate::augment::AugConfig;
use crate::config::DataSource;
use crate::data;
use crate::train::data::{RankShare, StepBatches, ViewMaker};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchDataConfig {
    /// The dataset, decoded at 96 px as the training loop reads it.
    pub data: DataSource,
    pub splits: String,
    pub batch_size: usize,
    /// Timed batches (after one warm-up batch).
    pub batches: usize,
    pub threads: Option<i32>,
    pub device: String,
    /// Progress bars on stderr.
    pub progress: bool,
}

pub fn run(a: &BenchDataConfig) -> Result<Value> {
    crate::runtime::threads::set(a.threads);
    let device = parse_device(&a.device).map_err(anyhow::Error::msg)?;
    let splits: Vec<Split> = data::parse_splits(&a.splits).map_err(anyhow::Error::msg)?;
    let t_open = Instant::now();
    let bank = data::ImageBank::new(a.data.open_all(&splits, a.progress)?);
    let open_secs = t_open.elapsed().as_secs_f64();
    if bank.len() < a.batch_size {
        bail!(
            "--batch-size {} is larger than the {} images",
            a.batch_size,
            bank.len()
        );
    }
    // The training loop's own loader: the same batches and views as `pretrain --seed 0`.
    let mut batches = StepBatches::new(bank, 0, a.batch_size, RankShare::ONE);
    let views = ViewMaker::new(
        AugConfig::mocov2(96),
        device,
        (0, a.batch_size, 96),
        (RankShare::ONE, a.batches as u64 + 1),
        (Kind::Float, false),
    );
    let mut t0 = Instant::now();
    for b in 0..=a.batches as u64 {
        if b == 1 {
            t0 = Instant::now(); // batch 0 warms up allocators and the page cache
        }
        let images = batches.images_of(b).to_device(device);
        let v = views.views(&images, b)?;
        if device != Device::Cpu {
            let _ = (v.v1.sum(Kind::Float) + v.v2.sum(Kind::Float)).double_value(&[]);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let ips = (a.batches * a.batch_size) as f64 / secs;
    eprintln!(
        "bench-data: {ips:.1} two-view images/s ({} batches of {}, {} threads, {device:?}); \
         store opened in {open_secs:.1} s",
        a.batches,
        a.batch_size,
        tch::get_num_threads()
    );
    Ok(
        json!({"two_view_images_per_sec": ips, "batch_size": a.batch_size, "batches": a.batches,
              "threads": tch::get_num_threads(), "device": format!("{device:?}"), "open_seconds": open_secs}),
    )
}
