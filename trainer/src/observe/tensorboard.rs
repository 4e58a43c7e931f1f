//! TensorBoard event files: what `metrics.jsonl` records, as scalars, and figures as images.
//!
//! Written here because the one crate for this (tensorboard-rs) is unmaintained since 2022 and
//! built on protobuf 2 and image 0.23. The format is small: a file of records, each the length
//! (u64 LE), its masked CRC-32C, an `Event` protobuf (tensorflow/core/util/event.proto, encoded
//! through prost with the fields below) and the data's masked CRC-32C.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prost::Message;
use serde_json::Value;

#[derive(Clone, PartialEq, Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
    #[prost(message, optional, tag = "7")]
    session_log: Option<SessionLog>,
}

#[derive(Clone, PartialEq, Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "4")]
    image: Option<SummaryImage>,
}

#[derive(Clone, PartialEq, Message)]
struct SummaryImage {
    #[prost(int32, tag = "1")]
    height: i32,
    #[prost(int32, tag = "2")]
    width: i32,
    /// 3: RGB.
    #[prost(int32, tag = "3")]
    colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    encoded_image_string: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct SessionLog {
    /// 1: START — TensorBoard drops the events of this run at and after the step it carries.
    #[prost(int32, tag = "1")]
    status: i32,
}

const SESSION_START: i32 = 1;
const RGB: i32 = 3;

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record of the TFRecord framing.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The time in a new file's name: now, or one second past the newest file already there.
/// TensorBoard reads a directory's files in name order, and a resumed run's file must come after
/// the one it continues even when both started within a second.
fn file_time(dir: &Path) -> u64 {
    let newest = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("events.out.tfevents.")?
                .split('.')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max();
    (now() as u64).max(newest.map_or(0, |t| t + 1))
}

/// One event file in a log directory; each event is written and flushed whole.
pub struct EventWriter {
    path: PathBuf,
    file: File,
    /// Scalars are tagged `{section}/{key}` (`pretrain/loss`, `linear/top1`).
    section: String,
}

impl EventWriter {
    /// A new file in `dir` (created) for a run that continues after step `after` (0: a fresh
    /// run). It opens with TensorBoard's restart marker at step `after + 1`, so what earlier
    /// processes logged in `dir` from that step on is hidden, as metrics.jsonl drops those lines.
    pub fn create(dir: &Path, section: &str, after: u64) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--tensorboard {}: cannot create it", dir.display()))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let name = format!(
            "events.out.tfevents.{}.{host}.{}.{section}",
            file_time(dir),
            std::process::id()
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let mut w = EventWriter {
            path,
            file,
            section: section.to_string(),
        };
        w.write(Event {
            wall_time: now(),
            file_version: Some("brain.Event:2".into()),
            ..Default::default()
        })?;
        w.write(Event {
            wall_time: now(),
            step: after as i64 + 1,
            session_log: Some(SessionLog {
                status: SESSION_START,
            }),
            ..Default::default()
        })?;
        Ok(w)
    }

    fn write(&mut self, e: Event) -> Result<()> {
        let bytes = record(&e.encode_to_vec());
        let before = self.file.metadata().map(|m| m.len());
        let written = self.file.write_all(&bytes).and_then(|_| self.file.flush());
        if written.is_err() {
            // A half record would end the file for every reader: cut it back off.
            if let Ok(len) = before {
                let _ = self.file.set_len(len);
            }
        }
        written.with_context(|| format!("{}: cannot write", self.path.display()))
    }

    fn summary(&mut self, step: u64, value: Vec<SummaryValue>) -> Result<()> {
        self.write(Event {
            wall_time: now(),
            step: step as i64,
            summary: Some(Summary { value }),
            ..Default::default()
        })
    }

    /// Every number of a metrics record but its step and wall time, as scalars at its step.
    pub fn scalars(&mut self, rec: &Value) -> Result<()> {
        let Some(step) = rec.get("step").and_then(Value::as_u64) else {
            return Ok(());
        };
        let Some(fields) = rec.as_object() else {
            return Ok(());
        };
        let value = fields
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "step" | "wall_time"))
            .filter_map(|(k, v)| {
                Some(SummaryValue {
                    tag: format!("{}/{k}", self.section),
                    simple_value: Some(v.as_f64()? as f32),
                    image: None,
                })
            })
            .collect();
        self.summary(step, value)
    }

    /// An image (encoded as PNG) at `step`, tagged `{section}/{tag}`.
    pub fn image(&mut self, tag: &str, step: u64, img: &image::RgbImage) -> Result<()> {
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png)
            .context("encoding a TensorBoard image")?;
        let image = SummaryImage {
            height: img.height() as i32,
            width: img.width() as i32,
            colorspace: RGB,
            encoded_image_string: png.into_inner(),
        };
        let value = vec![SummaryValue {
            tag: format!("{}/{tag}", self.section),
            simple_value: None,
            image: Some(image),
        }];
        self.summary(step, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masked CRC of TFRecord framing: crc32c("") = 0, so the mask's constant alone; and the
    /// record of an 8-byte zero length carries crc32c of those bytes rotated and offset.
    #[test]
    fn records_carry_masked_crc32c() {
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        // CRC-32C check value of "123456789" (RFC 3720) is 0xe3069283.
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }
}
