//! `RUN/metrics.jsonl`: one JSON object per logged step or evaluation, flushed as written so a
//! crash loses nothing already reported.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::observe::tensorboard::EventWriter;

pub struct MetricsLog {
    path: PathBuf,
    file: File,
    /// Every record written is also written there as scalars.
    tensorboard: Option<EventWriter>,
}

impl MetricsLog {
    /// Opens the log; with `keep_until = Some(step)` (a resume) the lines of steps after `step`
    /// are dropped first, so the log reads as one uninterrupted run.
    pub fn open(path: &Path, keep_until: Option<u64>) -> Result<Self> {
        let ctx = || format!("{}: cannot write metrics", path.display());
        let kept: Vec<String> = match (keep_until, File::open(path)) {
            (Some(step), Ok(f)) => BufReader::new(f)
                .lines()
                .map_while(|l| l.ok())
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s <= step)
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        atomic_io::write_atomic(path, text.as_bytes()).with_context(ctx)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(ctx)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
            tensorboard: None,
        })
    }

    /// Mirrors the log into TensorBoard event files in `dir` (tags `{section}/{key}`); `after`,
    /// the step the run continues from, is passed on so TensorBoard drops what the log dropped.
    pub fn with_tensorboard(
        mut self,
        dir: Option<&Path>,
        section: &str,
        after: u64,
    ) -> Result<Self> {
        self.tensorboard = dir
            .map(|d| EventWriter::create(d, section, after))
            .transpose()?;
        Ok(self)
    }

    /// The event file, for figures (None without --tensorboard).
    pub fn tensorboard(&mut self) -> Option<&mut EventWriter> {
        self.tensorboard.as_mut()
    }

    /// Appends one line; a failed append (a full disk, a file-size limit) is cut back off, so
    /// the file never ends in half a record.
    pub fn write(&mut self, v: &Value) -> Result<()> {
        let before = self.file.metadata().map(|m| m.len());
        let written = writeln!(self.file, "{v}").and_then(|_| self.file.flush());
        if written.is_err() {
            if let Ok(len) = before {
                let _ = self.file.set_len(len);
            }
        }
        written.with_context(|| format!("{}: cannot write metrics", self.path.display()))?;
        match self.tensorboard.as_mut() {
            Some(tb) => tb.scalars(v),
            None => Ok(()),
        }
    }
}

/// Every record of a metrics file.
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))
        })
        .collect()
}
