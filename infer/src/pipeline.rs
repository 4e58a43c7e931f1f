//! Decoding overlapped with inference: a producer thread decodes and transforms batch k+1 (on its
//! own rayon pool) while the backend runs batch k. The channel holds at most `QUEUE_BATCHES`
//! batches, so memory stays flat however large the split is.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;
use std::time::Instant;

use datasets::{decode, transform, SplitData};
use indicatif::{ProgressBar, ProgressStyle};
use models::Preprocess;
use rayon::prelude::*;

use crate::backend::Backend;
use crate::InferError;

const QUEUE_BATCHES: usize = 2;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub batch_size: usize,
    pub decode_threads: usize,
    /// Count undecodable images and go on instead of stopping at the first.
    pub skip_bad: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Position in the split (dataset order).
    pub index: usize,
    /// Class indices, best first (up to 5).
    pub top: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct RunOutput {
    pub predictions: Vec<Prediction>,
    /// `(image name, error)` of images skipped with `--skip-bad`.
    pub skipped: Vec<(String, String)>,
    pub seconds: f64,
    pub inference_seconds: f64,
}

struct Batch {
    indices: Vec<usize>,
    images: Vec<f32>,
    skipped: Vec<(String, String)>,
}

/// Indices of the `k` largest values, best first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// The model's input for one image, exactly the trainer's eval transform.
pub fn preprocess_sample(
    data: &SplitData,
    i: usize,
    p: &Preprocess,
) -> Result<Vec<f32>, InferError> {
    let img = decode::load(&data.samples[i].source)?;
    Ok(transform::eval_tensor(img, p))
}

/// Runs the split through `workers` backends (one per inference thread): each pulls the next
/// decoded batch from the shared bounded queue. On 2 cores, two single-threaded sessions beat one
/// two-threaded session (no intra-op synchronisation on small 96×96 feature maps).
pub fn run_split(
    data: &SplitData,
    preprocess: &Preprocess,
    workers: Vec<Box<dyn Backend + Send>>,
    cfg: &RunConfig,
) -> Result<RunOutput, InferError> {
    let n = data.samples.len();
    let crop = preprocess.crop as usize;
    let per_image = 3 * crop * crop;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.decode_threads.max(1))
        .thread_name(|i| format!("decode-{i}"))
        .build()
        .map_err(|e| InferError::Usage(format!("--decode-threads: {e}")))?;
    let bar = if cfg.progress {
        let b = ProgressBar::new(n as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let (tx, rx) = sync_channel::<Result<Batch, InferError>>(QUEUE_BATCHES.max(workers.len() + 1));
    let rx = Mutex::new(rx);
    let results: Vec<Result<RunOutput, InferError>> = std::thread::scope(|scope| {
        scope.spawn(move || {
            for chunk in (0..n).collect::<Vec<_>>().chunks(cfg.batch_size.max(1)) {
                let decoded: Vec<(usize, Result<Vec<f32>, InferError>)> = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|&i| (i, preprocess_sample(data, i, preprocess)))
                        .collect()
                });
                let mut batch = Batch {
                    indices: Vec::with_capacity(chunk.len()),
                    images: Vec::with_capacity(chunk.len() * per_image),
                    skipped: vec![],
                };
                for (i, r) in decoded {
                    match r {
                        Ok(v) => {
                            batch.indices.push(i);
                            batch.images.extend_from_slice(&v);
                        }
                        Err(e) if cfg.skip_bad => batch
                            .skipped
                            .push((data.samples[i].name.clone(), e.to_string())),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                if tx.send(Ok(batch)).is_err() {
                    return; // every consumer stopped on an error
                }
            }
        });
        let handles: Vec<_> = workers
            .into_iter()
            .map(|mut backend| {
                let (rx, bar) = (&rx, bar.clone());
                scope.spawn(move || consume(rx, backend.as_mut(), crop, &bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(InferError::Runtime("an inference worker panicked".into()))
                })
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut out = RunOutput::default();
    for r in results {
        let r = r?;
        out.predictions.extend(r.predictions);
        out.skipped.extend(r.skipped);
        out.inference_seconds = out.inference_seconds.max(r.inference_seconds);
    }
    out.predictions.sort_by_key(|p| p.index);
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// One inference worker: takes batches until the queue closes. An error closes its side; the
/// producer stops once every worker has stopped.
fn consume(
    rx: &Mutex<Receiver<Result<Batch, InferError>>>,
    backend: &mut dyn Backend,
    crop: usize,
    bar: &ProgressBar,
) -> Result<RunOutput, InferError> {
    let mut out = RunOutput::default();
    loop {
        let next = rx
            .lock()
            .map_err(|_| InferError::Runtime("queue poisoned".into()))?
            .recv();
        let Ok(batch) = next else { return Ok(out) };
        let batch = batch?;
        bar.inc((batch.indices.len() + batch.skipped.len()) as u64);
        out.skipped.extend(batch.skipped);
        if batch.indices.is_empty() {
            continue;
        }
        let t = Instant::now();
        let m = batch.indices.len();
        let result = backend.run(&batch.images, m, crop)?;
        out.inference_seconds += t.elapsed().as_secs_f64();
        let logits = result.logits.ok_or_else(|| {
            InferError::Model("the model has no `logits` output (an encoder-only export?)".into())
        })?;
        let classes = logits.len() / m;
        for (row, &i) in logits.chunks(classes).zip(&batch.indices) {
            out.predictions.push(Prediction {
                index: i,
                top: top_k(row, 5),
            });
        }
    }
}
