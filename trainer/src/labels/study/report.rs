//! The study's results: one JSON line per classifier (a rerun with the same `--out` continues
//! after the last line), then a table of mean ± sd over seeds with the gain over a random
//! request of the same budget, and a figure of accuracy against budget.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::LabelStudyConfig;

/// One classifier: a start, a request of `budget` pool images, and its val accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seed: u64,
    pub start_per_class: usize,
    /// `start` for the classifier of the start alone, else the request's name.
    pub request: String,
    pub budget: usize,
    pub pool: usize,
    pub top1: f64,
    pub top5: f64,
    /// The request's true class counts.
    pub min_per_class: usize,
    pub max_per_class: usize,
    /// Choosing the request (the classifier's training excluded).
    pub request_cpu_s: f64,
}

pub struct Results {
    path: PathBuf,
    records: Vec<Record>,
}

impl Results {
    /// The records so far; a torn last line (a killed study) is dropped.
    pub fn open(path: &Path) -> Result<Self> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        let records = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let r = Results {
            path: path.to_path_buf(),
            records,
        };
        r.rewrite()?;
        Ok(r)
    }

    fn rewrite(&self) -> Result<()> {
        let lines: String = self
            .records
            .iter()
            .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
            .collect::<serde_json::Result<_>>()?;
        atomic_io::write_atomic(&self.path, lines.as_bytes())?;
        Ok(())
    }

    pub fn add(&mut self, r: Record) -> Result<()> {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        writeln!(f, "{}", serde_json::to_string(&r)?)
            .and_then(|_| f.sync_data())
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        self.records.push(r);
        Ok(())
    }

    /// Whether `count` records of this start and request are there.
    pub fn has(&self, seed: u64, per_class: usize, request: &str, count: usize) -> bool {
        let n = self
            .records
            .iter()
            .filter(|r| r.seed == seed && r.start_per_class == per_class && r.request == request);
        n.count() >= count
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// One row of the table: a start size, a request and a budget over the seeds.
#[derive(Debug, Serialize)]
struct Row {
    start_per_class: usize,
    request: String,
    budget: usize,
    pool: usize,
    seeds: usize,
    top1_mean: f64,
    top1_sd: f64,
    /// Paired by seed with the random request of the same budget.
    gain_over_random_mean: Option<f64>,
    gain_over_random_sd: Option<f64>,
    min_per_class: usize,
    max_per_class: usize,
    request_cpu_s: f64,
}

type Key = (usize, String, usize);

fn rows(records: &[Record]) -> Vec<Row> {
    let mut groups: BTreeMap<Key, Vec<&Record>> = BTreeMap::new();
    for r in records {
        let key = (r.start_per_class, r.request.clone(), r.budget);
        groups.entry(key).or_default().push(r);
    }
    let random = |r: &Record| {
        let key = (r.start_per_class, "random".to_string(), r.budget);
        let found = groups.get(&key)?.iter().find(|x| x.seed == r.seed)?;
        Some(r.top1 - found.top1)
    };
    let mut out = Vec::new();
    for ((start, request, budget), rs) in &groups {
        let top1: Vec<f64> = rs.iter().map(|r| r.top1).collect();
        let gains: Vec<f64> = rs.iter().filter_map(|r| random(r)).collect();
        let (m, sd) = mean_sd(&top1);
        let gain = (request != "start" && !gains.is_empty()).then(|| mean_sd(&gains));
        out.push(Row {
            start_per_class: *start,
            request: request.clone(),
            budget: *budget,
            pool: rs[0].pool,
            seeds: rs.len(),
            top1_mean: m,
            top1_sd: sd,
            gain_over_random_mean: gain.map(|g| g.0),
            gain_over_random_sd: gain.map(|g| g.1),
            min_per_class: rs.iter().map(|r| r.min_per_class).min().unwrap_or(0),
            max_per_class: rs.iter().map(|r| r.max_per_class).max().unwrap_or(0),
            request_cpu_s: rs.iter().map(|r| r.request_cpu_s).sum::<f64>() / rs.len() as f64,
        });
    }
    out.sort_by_key(|r| (r.start_per_class, r.budget, r.request != "random"));
    out
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| start / class | request | budget | top-1 % (mean ± sd) | vs random (pp) | per class min–max | request CPU s |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let gain = match (r.gain_over_random_mean, r.gain_over_random_sd) {
            (Some(m), Some(sd)) if r.request != "random" => {
                format!("{:+.2} ± {:.2}", 100.0 * m, 100.0 * sd)
            }
            _ => "–".into(),
        };
        let share = 100.0 * r.budget as f64 / r.pool as f64;
        s.push_str(&format!(
            "| {} | {} | {} ({share:.0} %) | {:.2} ± {:.2} (n={}) | {gain} | {}–{} | {:.0} |\n",
            r.start_per_class,
            r.request,
            r.budget,
            100.0 * r.top1_mean,
            100.0 * r.top1_sd,
            r.seeds,
            r.min_per_class,
            r.max_per_class,
            r.request_cpu_s
        ));
    }
    s
}

/// Accuracy against images added, one panel per start size, one line per request (each from
/// the start's accuracy at 0).
fn figure(rows: &[Row], out: &Path) -> Result<()> {
    let mut panels: BTreeMap<usize, BTreeMap<String, Vec<(f64, f64)>>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.request != "start") {
        let start = rows
            .iter()
            .find(|s| s.request == "start" && s.start_per_class == r.start_per_class);
        let line = panels.entry(r.start_per_class).or_default();
        let points = line
            .entry(r.request.clone())
            .or_insert_with(|| start.map_or(vec![], |s| vec![(0.0, 100.0 * s.top1_mean)]));
        points.push((r.budget as f64, 100.0 * r.top1_mean));
    }
    let panels: Vec<crate::observe::plot::NamedPanel> = panels
        .into_iter()
        .map(|(start, lines)| {
            let title = format!("val top-1 %, start {start} per class");
            (title, lines.into_iter().collect())
        })
        .collect();
    crate::observe::plot::named_curves(out, "labels added", &panels)
}

/// summary.md, label_study.png, and the summary as JSON.
pub fn finish(c: &LabelStudyConfig, results: &Results) -> Result<Value> {
    let rows = rows(&results.records);
    let (table, png) = (c.out.join("summary.md"), c.out.join("label_study.png"));
    let md = markdown(&rows);
    atomic_io::write_atomic(&table, md.as_bytes())?;
    figure(&rows, &png)?;
    eprint!("{md}");
    eprintln!("label-study: {} and {}", table.display(), png.display());
    Ok(json!({
        "rows": rows,
        "records": results.records.len(),
        "table": table.display().to_string(),
        "figure": png.display().to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seed: u64, request: &str, budget: usize, top1: f64) -> Record {
        Record {
            seed,
            start_per_class: 10,
            request: request.into(),
            budget,
            pool: 100,
            top1,
            top5: 1.0,
            min_per_class: 1,
            max_per_class: 3,
            request_cpu_s: 2.0,
        }
    }

    #[test]
    fn the_gain_over_random_is_paired_by_seed() {
        let records = vec![
            rec(0, "random", 10, 0.50),
            rec(1, "random", 10, 0.60),
            rec(0, "entropy", 10, 0.55),
            rec(1, "entropy", 10, 0.61),
        ];
        let rows = rows(&records);
        let e = rows.iter().find(|r| r.request == "entropy").unwrap();
        assert!((e.gain_over_random_mean.unwrap() - 0.03).abs() < 1e-12);
        // Paired differences 0.05 and 0.01: sd 0.0283; unpaired it would be about 0.06.
        assert!((e.gain_over_random_sd.unwrap() - 0.02f64.sqrt() / 5.0).abs() < 1e-12);
        assert_eq!(rows[0].request, "random", "random first within a budget");
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("label-study-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.jsonl");
        let line = serde_json::to_string(&rec(0, "random", 10, 0.5)).unwrap();
        fs::write(&path, format!("{line}\n{{\"seed\": 1, \"sta")).unwrap();
        let r = Results::open(&path).unwrap();
        assert_eq!(r.records.len(), 1);
        assert!(r.has(0, 10, "random", 1) && !r.has(1, 10, "random", 1));
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{line}\n"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
