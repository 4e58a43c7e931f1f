//! `moco-train plot`'s flags: one run's curves, or several runs against the epoch.

use std::path::PathBuf;

use clap::Args;

use crate::observe::plot;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Run directory (reads RUN/metrics.jsonl); several runs are drawn together against the
    /// epoch (loss, kNN, drift of the queued keys) and need --out.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Output PNG (default RUN/curves.png for one run).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A random-init kNN accuracy (fraction) to draw as the floor.
    #[arg(long)]
    pub floor: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

impl PlotArgs {
    pub fn run(&self) -> anyhow::Result<serde_json::Value> {
        let a = self;
        let out = match (&a.out, a.runs.as_slice()) {
            (Some(out), _) => out.clone(),
            (None, [run]) => run.join("curves.png"),
            (None, _) => anyhow::bail!("--out: needed when plotting several runs"),
        };
        if let [run] = a.runs.as_slice() {
            plot::curves_with_floor(&run.join("metrics.jsonl"), &out, a.floor)?;
        } else {
            let label = |r: &PathBuf| {
                r.file_name()
                    .map_or_else(|| r.display().to_string(), |n| n.to_string_lossy().into())
            };
            let metrics: Vec<PathBuf> = a.runs.iter().map(|r| r.join("metrics.jsonl")).collect();
            let runs: Vec<(String, &std::path::Path)> = a
                .runs
                .iter()
                .zip(&metrics)
                .map(|(r, m)| (label(r), m.as_path()))
                .collect();
            plot::compare(&runs, &out, a.floor)?;
        }
        Ok(serde_json::json!({"out": out.display().to_string()}))
    }
}
