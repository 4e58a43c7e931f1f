//! A step's images and views: which images (epoch permutations keyed by (seed, epoch), this
//! rank's strided share) and how they are augmented (two views drawn from the (seed, step)
//! stream for the whole global batch, this rank's share kept) — so that any world size, and a
//! resumed run, sees exactly what one uninterrupted process would.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::augment::{AugConfig, Augmenter};
use crate::data::ImageBank;
use crate::methods::Views;
use crate::runtime::dist::share;
use crate::runtime::rng::{permutation, stream, Purpose};

/// Where this process sits among the ranks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankShare {
    pub rank: usize,
    pub world: usize,
}

impl RankShare {
    pub const ONE: RankShare = RankShare { rank: 0, world: 1 };
}

/// The images of each step, epoch after epoch.
#[derive(Clone)]
pub struct StepBatches {
    bank: Arc<ImageBank>,
    seed: u64,
    /// The global batch.
    batch: usize,
    share: RankShare,
    /// The permutation of the epoch last asked for.
    order: Option<(u64, Vec<i64>)>,
}

impl StepBatches {
    pub fn new(bank: ImageBank, seed: u64, batch: usize, share: RankShare) -> Self {
        StepBatches {
            bank: Arc::new(bank),
            seed,
            batch,
            share,
            order: None,
        }
    }

    /// Images of the pretraining set by index, uint8 `[N,3,S,S]` (figures, not steps).
    pub fn pick(&self, idx: &[usize]) -> Tensor {
        self.bank.batch(idx)
    }

    pub fn images(&self) -> usize {
        self.bank.len()
    }

    /// Whole batches in one pass over the images (the last, partial one is dropped).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.bank.len() / self.batch) as u64
    }

    /// This rank's share of step `step`'s images, uint8 `[n, 3, H, W]` on the host.
    pub fn images_of(&mut self, step: u64) -> Tensor {
        let per_epoch = self.steps_per_epoch().max(1);
        let epoch = step / per_epoch;
        if self.order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let n = self.bank.len();
            let order = permutation(&mut stream(self.seed, Purpose::EpochOrder, epoch), n);
            self.order = Some((epoch, order));
        }
        let order = &self.order.as_ref().expect("set above").1;
        let pos = (step % per_epoch) as usize * self.batch;
        let idx: Vec<usize> = share(
            &order[pos..pos + self.batch],
            self.share.rank,
            self.share.world,
        )
        .iter()
        .map(|&i| i as usize)
        .collect();
        self.bank.batch(&idx)
    }
}

/// Steps ahead in the loader: the gather of step s + 1 (and + 2) overlaps step s.
const AHEAD: usize = 2;

/// The steps' images gathered on a thread of its own, ahead of the loop, in pinned memory on
/// CUDA so that their upload is asynchronous (a pageable upload makes the host wait for the
/// device, and the next step's gather would wait for the upload).
pub struct Prefetch {
    batches: StepBatches,
    device: Device,
    /// The step the channel delivers next, and the channel.
    next: Option<(u64, Receiver<Tensor>)>,
}

impl Prefetch {
    pub fn new(batches: StepBatches, device: Device) -> Self {
        Prefetch {
            batches,
            device,
            next: None,
        }
    }

    /// This rank's images of `step` on the device (uint8 `[n,3,H,W]`). Steps asked for in order
    /// come from the loader thread; another step restarts it there.
    pub fn images_of(&mut self, step: u64) -> Result<Tensor> {
        if self.next.as_ref().map(|(s, _)| *s) != Some(step) {
            self.next = Some((step, self.start(step)));
        }
        let (at, rx) = self.next.as_mut().expect("set above");
        let host = rx
            .recv()
            .context("pretrain: the image loader thread stopped")?;
        *at += 1;
        Ok(crate::runtime::counters::upload_async(&host, self.device))
    }

    fn start(&self, from: u64) -> Receiver<Tensor> {
        let (tx, rx) = sync_channel(AHEAD);
        let mut batches = self.batches.clone();
        let device = self.device;
        std::thread::spawn(move || {
            for step in from.. {
                let t = batches.images_of(step);
                let t = match device {
                    Device::Cuda(_) => t.pin_memory(device),
                    _ => t,
                };
                // The loop went away (another step, or the end): so does this thread.
                if tx.send(t).is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// The two augmented views of a step's images.
pub struct ViewMaker {
    aug: Augmenter,
    /// The run's length, over which progressive resizing grows the views.
    total_steps: u64,
    seed: u64,
    batch: usize,
    /// Side of the decoded images the views are cut from.
    size: u32,
    share: RankShare,
    kind: Kind,
    channels_last: bool,
}

impl ViewMaker {
    pub fn new(
        cfg: AugConfig,
        device: Device,
        (seed, batch, size): (u64, usize, u32),
        (share, total_steps): (RankShare, u64),
        (kind, channels_last): (Kind, bool),
    ) -> Self {
        ViewMaker {
            aug: Augmenter::new(cfg, &models::Preprocess::default(), device),
            total_steps,
            seed,
            batch,
            size,
            share,
            kind,
            channels_last,
        }
    }

    /// The augmentation's batched (GPU) path on any device.
    pub fn use_batched_path(&mut self) {
        self.aug.use_batched_path();
    }

    /// Views 1 and 2 of this rank's `images` (on the device) at `step`, and the small views
    /// (multi-crop) when the augmentation has them. Every rank draws the whole batch's
    /// parameters and keeps its share: any world size sees the same views.
    pub fn views(&self, images: &Tensor, step: u64) -> Result<Views> {
        let mut rng = stream(self.seed, Purpose::Augment, step);
        let (s, r, w) = (self.size, self.share.rank, self.share.world);
        let p1 = share(&self.aug.draw(&mut rng, 0, self.batch, (s, s)), r, w);
        let p2 = share(&self.aug.draw(&mut rng, 1, self.batch, (s, s)), r, w);
        let small: Vec<Vec<_>> = self
            .aug
            .draw_small(&mut rng, self.batch, (s, s))
            .iter()
            .map(|p| share(p, r, w))
            .collect();
        let side = self.aug.cfg.size_at(step, self.total_steps);
        let mut pair = self.aug.views_of(images, &[&p1, &p2], side).into_iter();
        let (v1, v2) = (pair.next().expect("two"), pair.next().expect("two"));
        let small = self.aug.small_views_of(images, &small);
        let prepared = |v: Tensor| -> Result<Tensor> {
            let mut v = match self.kind {
                Kind::Float => v,
                k => v.to_kind(k),
            };
            if self.channels_last {
                crate::nn::amp::make_channels_last(&mut v)?;
            }
            Ok(v)
        };
        Ok(Views {
            v1: prepared(v1)?,
            v2: prepared(v2)?,
            small: small.into_iter().map(prepared).collect::<Result<_>>()?,
        })
    }
}
