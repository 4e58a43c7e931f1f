//! `moco-train label-study`: does a labeling strategy help, and by how much? From a labeled
//! split it keeps a few images per class as the labeled start and hides the labels of the rest
//! (the pool); each strategy requests a budget from the pool through `label-request` (with a
//! classifier trained on the start, as a user would), an oracle answers from the hidden labels,
//! `merge-labels` builds the new root, and `linear --fast` is trained on it and scored on val.
//! A random request and a class-balanced random one of the same budget are the baselines. Every
//! step is the command a user runs, called in-process, so the study measures the product.

mod report;
mod roots;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use datasets::layout::{Format, Split};
use datasets::merge_labels::MergeLabelsConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Compute, DataSource};
use crate::eval::linear::{self, LinearConfig, ProbeMode, RAW_LR, STANDARDIZED_LR};
use crate::labels::request::{self, ContrastiveScore, LabelRequestConfig, Strategy};
use crate::nn::encoder::EncoderSource;
use crate::nn::optim::EpochDecay;
use crate::runtime::stop::StopFlag;
pub use report::Record;
use roots::StartRoot;

/// How a request is chosen: a strategy of `label-request`, or a baseline.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// Uniformly random: the baseline a strategy must beat.
    Random,
    /// Random with equal counts per true class: a balance only the labels can give.
    RandomBalanced,
    /// label-request's strategies (see `label-request --strategy`), ranking with a classifier
    /// trained on the start.
    Entropy,
    Margin,
    Contrastive,
    Kcenter,
    Balanced,
}

impl Request {
    pub const ALL: [Request; 7] = [
        Request::Random,
        Request::RandomBalanced,
        Request::Entropy,
        Request::Margin,
        Request::Contrastive,
        Request::Kcenter,
        Request::Balanced,
    ];

    pub fn name(self) -> &'static str {
        match self.strategy() {
            Some(s) => s.name(),
            None if self == Request::Random => "random",
            None => "random-balanced",
        }
    }

    fn strategy(self) -> Option<Strategy> {
        match self {
            Request::Random | Request::RandomBalanced => None,
            Request::Entropy => Some(Strategy::Entropy),
            Request::Margin => Some(Strategy::Margin),
            Request::Contrastive => Some(Strategy::Contrastive),
            Request::Kcenter => Some(Strategy::Kcenter),
            Request::Balanced => Some(Strategy::Balanced),
        }
    }
}

/// The classifier trained before and after each request: `linear --fast`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    pub epochs: usize,
    /// `--standardize` (lr 0.1) instead of raw features (lr 30).
    pub standardize: bool,
}

/// `moco-train label-study`, every number decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelStudyConfig {
    /// A labeled dataset in the folder layout: its train split is split into start and pool,
    /// its val split scores every classifier.
    pub data: DataSource,
    pub compute: Compute,
    pub encoder: EncoderSource,
    /// Labeled images per class at the start.
    pub starts: Vec<usize>,
    /// Request sizes as fractions of the pool.
    pub budgets: Vec<f64>,
    pub seeds: Vec<u64>,
    pub requests: Vec<Request>,
    pub probe: ProbeSettings,
    /// results.jsonl (one line per classifier), summary.md, label_study.png; work/ while a
    /// start is studied.
    pub out: PathBuf,
    pub progress: bool,
}

impl LabelStudyConfig {
    fn check(&self) -> Result<()> {
        if self.starts.is_empty() || self.starts.contains(&0) {
            bail!("--starts: at least one size, each at least 1 image per class");
        }
        if let Some(b) = self.budgets.iter().find(|&&b| !(b > 0.0 && b <= 1.0)) {
            bail!("--budgets {b}: a fraction of the pool in (0, 1]");
        }
        if self.budgets.is_empty() || self.seeds.is_empty() || self.requests.is_empty() {
            bail!("--budgets, --seeds and --requests need at least one value each");
        }
        if self.probe.epochs == 0 {
            bail!("--probe-epochs must be at least 1");
        }
        Ok(())
    }

    /// The data of one study root, with its own decoded-store folder.
    fn source(&self, root: &Path, cache: &Path) -> DataSource {
        DataSource {
            root: root.to_path_buf(),
            format: Some(Format::Folder),
            size: self.data.size,
            cache_dir: Some(cache.to_path_buf()),
        }
    }

    /// `linear --fast` on `root`, written to `out`.
    fn probe(&self, root: &Path, cache: &Path, out: &Path, seed: u64) -> Result<Value> {
        let e = self.probe.epochs;
        let c = LinearConfig {
            command_line: Vec::new(),
            data: self.source(root, cache),
            compute: self.compute.clone(),
            encoder: self.encoder.clone(),
            train_split: Split::Train,
            val_split: Split::Val,
            out: out.to_path_buf(),
            epochs: e,
            lr: if self.probe.standardize {
                STANDARDIZED_LR
            } else {
                RAW_LR
            },
            // `linear`'s milestones (60 and 80 of 100 epochs) at the same fractions.
            decay: EpochDecay::Milestones(vec![e * 6 / 10, e * 8 / 10]),
            batch_size: 256,
            weight_decay: 0.0,
            momentum: 0.9,
            mode: ProbeMode::Fast,
            standardize: self.probe.standardize,
            knn: None,
            seed,
            progress: self.progress,
            tensorboard: None,
            resume: false,
        };
        linear::run(&c, StopFlag::new())
    }
}

/// Process CPU seconds (every thread, user + system).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// One start (a seed and a size): its root, its classifier, and every request.
struct Cell<'a> {
    c: &'a LabelStudyConfig,
    seed: u64,
    per_class: usize,
    work: PathBuf,
    root: StartRoot,
}

impl Cell<'_> {
    fn cache(&self) -> PathBuf {
        self.work.join("cache")
    }

    fn budgets(&self) -> Vec<usize> {
        let n = self.root.pool.len() as f64;
        let b = self.c.budgets.iter();
        b.map(|f| ((f * n).round() as usize).clamp(1, self.root.pool.len()))
            .collect()
    }

    fn record(&self, request: &str, budget: usize, probe: &Value, counts: &[usize]) -> Record {
        Record {
            seed: self.seed,
            start_per_class: self.per_class,
            request: request.to_string(),
            budget,
            pool: self.root.pool.len(),
            top1: probe["top1"].as_f64().unwrap_or(f64::NAN),
            top5: probe["top5"].as_f64().unwrap_or(f64::NAN),
            min_per_class: counts.iter().copied().min().unwrap_or(0),
            max_per_class: counts.iter().copied().max().unwrap_or(0),
            request_cpu_s: 0.0,
        }
    }

    /// The classifier of the start alone (budget 0); the strategies rank with it.
    fn start_probe(&self) -> Result<Record> {
        let out = self.work.join("probe-start");
        let probe = self
            .c
            .probe(&self.root.root, &self.cache(), &out, self.seed)?;
        let counts = vec![0; self.root.classes.len()];
        Ok(self.record("start", 0, &probe, &counts))
    }

    /// The ranked request of `budget` images in `ranked`.
    fn request(&self, r: Request, budget: usize, ranked: &Path) -> Result<()> {
        let Some(strategy) = r.strategy() else {
            let order = self
                .root
                .random_order(self.seed, r == Request::RandomBalanced);
            return self.root.write_request(&order[..budget], ranked);
        };
        let c = LabelRequestConfig {
            data: self.c.source(&self.root.root, &self.cache()),
            compute: self.c.compute.clone(),
            encoder: self.c.encoder.clone(),
            classifier: Some(self.work.join("probe-start/classifier.safetensors")),
            pool: Split::Unlabeled,
            labeled: Split::Train,
            budget,
            strategy,
            out: ranked.to_path_buf(),
            k: 200,
            t: 0.1,
            contrastive: ContrastiveScore {
                temperature: 0.2,
                negatives: 4096,
                seed: self.seed,
            },
            batch_size: 256,
            progress: self.c.progress,
        };
        request::run(&c).map(|_| ())
    }

    /// The first `budget` of a ranked request answered, merged and probed; the request's true
    /// class counts.
    fn merged_probe(&self, ranked: &Path, budget: usize) -> Result<(Value, Vec<usize>)> {
        let dir = self.work.join(format!("budget-{budget}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let (request, labels) = (dir.join("request.csv"), dir.join("labels.csv"));
        roots::truncate_request(ranked, budget, &request)?;
        let counts = self.root.answer(&roots::requested(&request)?, &labels)?;
        let merged = dir.join("merged");
        let merge = MergeLabelsConfig::for_files(&self.root.root, &request, &labels, &merged);
        datasets::merge_labels::run(&merge)?;
        let probe = self
            .c
            .probe(&merged, &dir.join("cache"), &dir.join("probe"), self.seed)?;
        fs::remove_dir_all(&dir)?;
        Ok((probe, counts))
    }

    /// Every budget of one request, appended to the results as each ends.
    fn study(&self, r: Request, results: &mut report::Results) -> Result<()> {
        let budgets = self.budgets();
        let ranked = self.work.join(format!("{}.csv", r.name()));
        let t = cpu_seconds();
        self.request(r, budgets.iter().copied().max().unwrap_or(1), &ranked)?;
        let cpu = cpu_seconds() - t;
        for b in budgets {
            let (probe, counts) = self.merged_probe(&ranked, b)?;
            let mut rec = self.record(r.name(), b, &probe, &counts);
            rec.request_cpu_s = cpu;
            results.add(rec)?;
        }
        Ok(())
    }
}

/// One start: skipped when the results already hold all of it.
fn study_start(
    c: &LabelStudyConfig,
    train: &datasets::SplitData,
    (seed, per_class): (u64, usize),
    results: &mut report::Results,
) -> Result<()> {
    let todo: Vec<Request> = c
        .requests
        .iter()
        .copied()
        .filter(|r| !results.has(seed, per_class, r.name(), c.budgets.len()))
        .collect();
    if todo.is_empty() && results.has(seed, per_class, "start", 1) {
        return Ok(());
    }
    let work = c.out.join("work");
    let _ = fs::remove_dir_all(&work);
    let root = roots::build(&c.data.root, train, per_class, seed, &work.join("start"))?;
    let cell = Cell {
        c,
        seed,
        per_class,
        work: work.clone(),
        root,
    };
    let start = cell.start_probe()?;
    if !results.has(seed, per_class, "start", 1) {
        results.add(start)?;
    }
    for r in todo {
        cell.study(r, results)?;
    }
    fs::remove_dir_all(&work)?;
    Ok(())
}

pub fn run(c: &LabelStudyConfig) -> Result<Value> {
    c.check()?;
    let _lock = crate::runtime::run_dir::claim(&c.out)?;
    let largest = c.starts.iter().copied().max().unwrap_or(1);
    let train = roots::open_labeled(&c.data.root, Split::Train, largest)?;
    let mut results = report::Results::open(&c.out.join("results.jsonl"))?;
    for &seed in &c.seeds {
        for &per_class in &c.starts {
            study_start(c, &train, (seed, per_class), &mut results)?;
        }
    }
    report::finish(c, &results)
}
