//! MoCo v2's aug+, BYOL's pair of pipelines, multi-crop's small views (and the linear-eval train
//! transform), batched with libtorch on the training device. Parameters are drawn on the host from a seeded stream
//! (`params`), then one batch of uint8 images becomes normalized float views in a handful of
//! batched kernels (`ops`).

pub mod batched;
pub mod blur_cpu;
pub mod color_cpu;
pub mod ops;
pub mod params;

use rand::Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use models::Preprocess;
pub use params::{AugConfig, CropBox, Jitter, SmallViews, ViewParams};

/// Images per pass on the CPU: 16 views of 96×96 are 1.7 MB of floats, within L2/L3.
pub const CPU_CHUNK: usize = 16;

pub struct Augmenter {
    pub cfg: AugConfig,
    mean: Tensor,
    std: Tensor,
    /// The whole batch through batched libtorch ops (the GPU path), else chunks with the host's
    /// colour and blur loops (the CPU path).
    batched: bool,
    consts: batched::ConstCache,
}

impl Augmenter {
    pub fn new(cfg: AugConfig, pre: &Preprocess, device: Device) -> Self {
        let stat = |v: &[f32; 3]| Tensor::from_slice(v).to(device).view([1, 3, 1, 1]);
        Augmenter {
            cfg,
            mean: stat(&pre.mean),
            std: stat(&pre.std),
            batched: device.is_cuda(),
            consts: Default::default(),
        }
    }

    /// The GPU's batched path on any device: on the CPU it shows which ops a GPU step would
    /// dispatch (`bench-step --gpu-path`).
    pub fn use_batched_path(&mut self) {
        self.batched = true;
    }

    /// Parameters of view `view` (0 or 1 of a pair: BYOL's pipelines differ) of `n` images.
    pub fn draw(
        &self,
        rng: &mut impl Rng,
        view: usize,
        n: usize,
        (height, width): (u32, u32),
    ) -> Vec<ViewParams> {
        let cfg = self.cfg.view(view);
        (0..n)
            .map(|_| params::draw_view(rng, &cfg, height, width))
            .collect()
    }

    /// Parameters of the small views (multi-crop) of `n` images: one list per small view, drawn
    /// view after view; none without small views.
    pub fn draw_small(
        &self,
        rng: &mut impl Rng,
        n: usize,
        (height, width): (u32, u32),
    ) -> Vec<Vec<ViewParams>> {
        let (Some(small), Some(cfg)) = (self.cfg.small, self.cfg.small_view()) else {
            return Vec::new();
        };
        (0..small.count)
            .map(|_| {
                (0..n)
                    .map(|_| params::draw_view(rng, &cfg, height, width))
                    .collect()
            })
            .collect()
    }

    /// The network's inputs of the small views of `params` (from [`Augmenter::draw_small`]), at
    /// their own side; none without small views.
    pub fn small_views_of(&self, images: &Tensor, params: &[Vec<ViewParams>]) -> Vec<Tensor> {
        let Some(small) = self.cfg.small.filter(|_| !params.is_empty()) else {
            return Vec::new();
        };
        let lists: Vec<&[ViewParams]> = params.iter().map(Vec::as_slice).collect();
        self.views_of(images, &lists, small.size)
    }

    /// The small views of `params` in [0,1] (what a preview shows); none without small views.
    pub fn small_views_01(&self, images: &Tensor, params: &[Vec<ViewParams>]) -> Vec<Tensor> {
        let Some(small) = self.cfg.small else {
            return Vec::new();
        };
        params
            .iter()
            .map(|p| self.chunked(images, p, false, small.size))
            .collect()
    }

    /// uint8 `[N,3,H,W]` (any device) → augmented float views in [0,1], `[N,3,size,size]`.
    /// On the CPU the batch goes through in chunks of [`CPU_CHUNK`] images, so that the dozen
    /// elementwise passes of the pipeline run on data still in cache; a GPU takes it whole.
    pub fn views_01(&self, images: &Tensor, p: &[ViewParams]) -> Tensor {
        self.chunked(images, p, false, self.cfg.size)
    }

    fn chunked(&self, images: &Tensor, p: &[ViewParams], normalize: bool, size: u32) -> Tensor {
        if self.batched {
            let x = self.batched_01(images, &[p], size);
            return if normalize { self.normalize(&x) } else { x };
        }
        // Chunks run side by side on rayon's pool, each chunk's libtorch ops on its own thread:
        // one pool for the whole data path. (libtorch's OpenMP team, interleaved with rayon's
        // host passes, spent a third of the CPU spinning between its parallel regions.) Each
        // task owns its tensors (a Tensor may move between threads, not be shared by them).
        let n = p.len();
        let stats = normalize.then(|| (self.mean.shallow_clone(), self.std.shallow_clone()));
        let tasks: Vec<_> = (0..n)
            .step_by(CPU_CHUNK)
            .map(|at| {
                let len = CPU_CHUNK.min(n - at);
                let stats = stats
                    .as_ref()
                    .map(|(m, s)| (m.shallow_clone(), s.shallow_clone()));
                (
                    images.narrow(0, at as i64, len as i64),
                    &p[at..at + len],
                    stats,
                )
            })
            .collect();
        let parts: Vec<Tensor> = crate::runtime::threads::with_single_thread_workers(|| {
            tasks
                .into_par_iter()
                .map(|(x, p, stats)| {
                    crate::runtime::threads::single_in_this_thread();
                    let v = cpu_views_01(&x, p, size);
                    match stats {
                        Some((mean, std)) => (v - mean) / std,
                        None => v,
                    }
                })
                .collect()
        });
        Tensor::cat(&parts, 0)
    }

    /// Every view of `params` (lists of one entry per image) in one batched pass, in [0,1].
    fn batched_01(&self, images: &Tensor, params: &[&[ViewParams]], size: u32) -> Tensor {
        let x = images.to_kind(Kind::Float) / 255.0;
        batched::views(&x, params, size, &self.consts)
    }

    /// The network's inputs of several views of the same images (augmented and normalized),
    /// `size` pixels, one tensor per list of `params`: on the batched path all in one pass.
    pub fn views_of(&self, images: &Tensor, params: &[&[ViewParams]], size: u32) -> Vec<Tensor> {
        if !self.batched {
            return params
                .iter()
                .map(|p| self.chunked(images, p, true, size))
                .collect();
        }
        let n = images.size()[0];
        self.normalize(&self.batched_01(images, params, size))
            .split(n, 0)
    }

    pub fn normalize(&self, x01: &Tensor) -> Tensor {
        (x01 - &self.mean) / &self.std
    }

    /// The network's input: augmented and normalized.
    pub fn views(&self, images: &Tensor, p: &[ViewParams]) -> Tensor {
        self.chunked(images, p, true, self.cfg.size)
    }
}

/// The CPU path of one chunk: crop + flip in libtorch, then colour, blur and solarize in one host
/// buffer.
fn cpu_views_01(images: &Tensor, p: &[ViewParams], size: u32) -> Tensor {
    let x = images.to_kind(Kind::Float) / 255.0;
    let boxes: Vec<CropBox> = p.iter().map(|v| v.crop).collect();
    let flips: Vec<bool> = p.iter().map(|v| v.flip).collect();
    let x = ops::resized_crop_flip(&x, &boxes, &flips, size);
    let (n, c, h, w) = x.size4().expect("[N,3,H,W]");
    let mut buf = Vec::<f32>::try_from(x.contiguous().flatten(0, -1)).expect("f32 views");
    color_cpu::jitter_and_grayscale(&mut buf, (h * w) as usize, p);
    blur_cpu::blur(&mut buf, h as usize, w as usize, p, ops::BLUR_KERNEL);
    color_cpu::solarize(&mut buf, (h * w) as usize, p);
    Tensor::from_slice(&buf).view([n, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A rank computes its share of the batch's views alone: the result must not depend on which
    /// other images share the call (data-parallel runs rely on it).
    /// libtorch's thread count is partly process-wide: a test of the caller's count must not
    /// run while another test's workers set theirs for the first time.
    static THREAD_COUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn views_do_not_depend_on_the_rest_of_the_batch() {
        let _serial = THREAD_COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let aug = Augmenter::new(AugConfig::mocov2(32), &Preprocess::default(), Device::Cpu);
        let images = Tensor::randint(256, [40, 3, 40, 40], (Kind::Uint8, Device::Cpu));
        let p = aug.draw(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
            0,
            40,
            (40, 40),
        );
        let whole = aug.views(&images, &p);
        let parts = Tensor::cat(
            &[
                aug.views(&images.narrow(0, 0, 20), &p[..20]),
                aug.views(&images.narrow(0, 20, 20), &p[20..]),
            ],
            0,
        );
        let d = (whole - parts).abs().max().double_value(&[]);
        assert!(d < 1e-6, "views differ by {d}");
    }

    /// The chunks run on rayon's threads with libtorch limited to one thread there; the calling
    /// thread keeps its own count (the model's convolutions run on it).
    #[test]
    fn the_caller_keeps_its_libtorch_threads() {
        let _serial = THREAD_COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        tch::set_num_threads(2);
        let aug = Augmenter::new(AugConfig::mocov2(32), &Preprocess::default(), Device::Cpu);
        let images = Tensor::randint(256, [64, 3, 40, 40], (Kind::Uint8, Device::Cpu));
        let p = aug.draw(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(4),
            0,
            64,
            (40, 40),
        );
        let _ = aug.views(&images, &p);
        assert_eq!(tch::get_num_threads(), 2);
    }
}
