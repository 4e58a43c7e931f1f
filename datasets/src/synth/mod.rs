//! The embedded default dataset (`moco-train synth`): deterministic 96×96 PNGs in the folder
//! layout, small enough for a CPU demo — or, with `--layout competition --classes 800`, a set of
//! the competition's shape for measuring how every stage scales.
//!
//! A class is a *texture family* (stripes, checkerboard, dots, rings, ...) filling the whole
//! image at a random orientation, period, phase and centre, in two random grey levels with
//! pixel noise. Why so, each measured (see docs/benchmarks.md, "The embedded dataset"):
//! - full-field textures: every RandomResizedCrop keeps the class, so two views agree on it;
//! - grey: with random colours MoCo's first lesson is hue (an instance cue that colour jitter
//!   does not erase) and kNN on the class fell below the random-init floor; in grey the same
//!   run rises above it;
//! - 500 labeled images per class: kNN's k=200 needs more than 100 neighbours of a class.

mod texture;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

pub use texture::{class_variant, render, render_in, Variant};

use crate::error::{DataError, Result};
use crate::layout::Format;

pub const SHAPES: [&str; 10] = [
    "stripes",
    "checker",
    "dots",
    "rings",
    "pinwheel",
    "grid",
    "waves",
    "blobs",
    "bricks",
    "triangles",
];
pub const SIZE: u32 = 96;
/// More classes than the competition's 800 are allowed; the bound keeps a typo (an extra zero)
/// from writing millions of folders.
pub const MAX_CLASSES: usize = 10_000;
/// The largest PNG these textures give (measured 12–28 KB, mean 19 KB), for the free-space check.
const PNG_BYTES: u64 = 28_000;

#[derive(Debug, Clone, Serialize)]
pub struct SynthConfig {
    pub classes: usize,
    pub train_per_class: usize,
    pub val_per_class: usize,
    pub unlabeled: usize,
    pub seed: u64,
    /// `Folder` or `Competition` (SPEC "Data layouts").
    pub layout: Format,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            classes: 10,
            train_per_class: 500,
            val_per_class: 50,
            unlabeled: 2000,
            seed: 0,
            layout: Format::Folder,
        }
    }
}

impl SynthConfig {
    fn check(&self) -> Result<()> {
        if self.classes == 0 || self.classes > MAX_CLASSES {
            return Err(DataError::Usage(format!(
                "--classes must be 1..={MAX_CLASSES}"
            )));
        }
        if self.layout == Format::Stl10 {
            return Err(DataError::Usage(
                "--layout: synth writes `folder` or `competition`".into(),
            ));
        }
        Ok(())
    }

    fn images(&self) -> usize {
        self.classes * (self.train_per_class + self.val_per_class) + self.unlabeled
    }
}

/// Folder name of class `k`: the texture family, with its band when families repeat.
pub fn class_name(k: usize, classes: usize) -> String {
    if classes <= SHAPES.len() {
        SHAPES[k].to_string()
    } else {
        format!("{}-{:03}", SHAPES[k % SHAPES.len()], k / SHAPES.len())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub out: String,
    pub layout: Format,
    pub classes: usize,
    pub train: usize,
    pub val: usize,
    pub unlabeled: usize,
}

/// One image to write: where (relative to the root), its class and its pixels' seed.
struct Job {
    rel: PathBuf,
    class: usize,
    seed: u64,
}

/// Every image of a set as a function of its position, so the writer holds indices, not a list
/// of paths. Images are the same pixels in both layouts; only their names differ.
struct Plan<'a> {
    cfg: &'a SynthConfig,
    /// Competition layout: position → (class · per_class + i), shuffled so the class cannot be
    /// read off the number; empty for the folder layout.
    order: [Vec<u32>; 2],
    unlabeled_class: Vec<u32>,
}

const LABELED: [&str; 2] = ["train", "val"];

impl<'a> Plan<'a> {
    fn new(cfg: &'a SynthConfig) -> Plan<'a> {
        let per = [cfg.train_per_class, cfg.val_per_class];
        let order = [0, 1].map(|s| {
            if cfg.layout != Format::Competition {
                return Vec::new();
            }
            let mut v: Vec<u32> = (0..(cfg.classes * per[s]) as u32).collect();
            v.shuffle(&mut ChaCha8Rng::seed_from_u64(
                cfg.seed ^ (0x0DE5 + s as u64),
            ));
            v
        });
        let mut pick = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED);
        let unlabeled_class = (0..cfg.unlabeled)
            .map(|_| pick.random_range(0..cfg.classes) as u32)
            .collect();
        Plan {
            cfg,
            order,
            unlabeled_class,
        }
    }

    fn per_class(&self, s: usize) -> usize {
        [self.cfg.train_per_class, self.cfg.val_per_class][s]
    }

    /// Seeds differ by split, class and index, so no image repeats.
    fn seed(&self, split: u64, k: usize, i: usize) -> u64 {
        self.cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (split << 56)
            ^ ((k as u64) << 40)
            ^ i as u64
    }

    /// Labeled images first (train, then val), then the unlabeled ones.
    fn job(&self, mut j: usize) -> Job {
        for s in 0..2 {
            let n = self.cfg.classes * self.per_class(s);
            if j < n {
                return self.labeled(s, j);
            }
            j -= n;
        }
        let k = self.unlabeled_class[j] as usize;
        Job {
            rel: PathBuf::from(match self.cfg.layout {
                Format::Competition => format!("unlabeled/{j}.png"),
                _ => format!("unlabeled/{j:05}.png"),
            }),
            class: k,
            seed: self.seed(3, k, j),
        }
    }

    fn labeled(&self, s: usize, j: usize) -> Job {
        let per = self.per_class(s);
        let (pair, rel) = match self.cfg.layout {
            Format::Competition => (self.order[s][j] as usize, format!("{}/{j}.png", LABELED[s])),
            _ => (
                j,
                format!(
                    "{}/{}/{:05}.png",
                    LABELED[s],
                    class_name(j / per, self.cfg.classes),
                    j % per
                ),
            ),
        };
        let (k, i) = (pair / per, pair % per);
        Job {
            rel: PathBuf::from(rel),
            class: k,
            seed: self.seed(s as u64 + 1, k, i),
        }
    }

    fn folders(&self) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("unlabeled")];
        for split in LABELED {
            match self.cfg.layout {
                Format::Competition => dirs.push(split.into()),
                _ => dirs.extend(
                    (0..self.cfg.classes)
                        .map(|k| Path::new(split).join(class_name(k, self.cfg.classes))),
                ),
            }
        }
        dirs
    }

    /// Folder layout: `classes.txt`. Competition layout: the label tensors (the competition
    /// ships no class names).
    fn write_labels(&self, root: &Path) -> Result<()> {
        if self.cfg.layout != Format::Competition {
            let names: String = (0..self.cfg.classes)
                .map(|k| format!("{k}\t{}\n", class_name(k, self.cfg.classes)))
                .collect();
            let ct = root.join("classes.txt");
            return std::fs::write(&ct, names).map_err(|e| DataError::io(&ct, e));
        }
        for (s, split) in LABELED.iter().enumerate() {
            let per = self.per_class(s) as u32;
            let labels: Vec<i64> = self.order[s].iter().map(|p| (p / per) as i64).collect();
            crate::pt_labels::write_label_tensor(
                &root.join(format!("{split}_label_tensor.pt")),
                &labels,
            )?;
        }
        Ok(())
    }
}

/// Fails before any image is written when the disk cannot hold the set.
fn check_space(parent: &Path, images: usize) -> Result<()> {
    let need = images as u64 * PNG_BYTES;
    match atomic_io::space::available(parent) {
        Ok(free) if free < need => Err(DataError::file(
            parent,
            format!(
                "{images} images need about {} and the disk has {} free",
                atomic_io::space::human(need),
                atomic_io::space::human(free)
            ),
        )),
        _ => Ok(()),
    }
}

fn progress_bar(len: usize, progress: bool) -> ProgressBar {
    let bar = if progress {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("synth {bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// The sibling temp directory the set is built in.
fn temp_dir(out: &Path) -> Result<(PathBuf, PathBuf)> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    Ok((parent, tmp))
}

fn write_images(plan: &Plan, tmp: &Path, bar: &ProgressBar) -> Result<()> {
    for d in plan.folders() {
        let dir = tmp.join(d);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    }
    (0..plan.cfg.images())
        .into_par_iter()
        .try_for_each(|j| -> Result<()> {
            let job = plan.job(j);
            let path = tmp.join(&job.rel);
            let (shape, variant) = class_variant(job.class, plan.cfg.classes);
            render_in(shape, &variant, job.seed)
                .save(&path)
                .map_err(|e| DataError::file(&path, e))?;
            bar.inc(1);
            Ok(())
        })?;
    plan.write_labels(tmp)
}

/// Writes the set in `cfg.layout`: folder — `out/{train,val}/<class>/<i>.png`,
/// `out/unlabeled/<i>.png`, `out/classes.txt`; competition — `out/{train,val,unlabeled}/<i>.png`
/// numbered from 0 and `out/{train,val}_label_tensor.pt`. Built in a sibling temp directory and
/// renamed, so `out` is complete or absent.
pub fn write_dataset(out: &Path, cfg: &SynthConfig, progress: bool) -> Result<SynthSummary> {
    cfg.check()?;
    if out.exists() {
        return Err(DataError::file(
            out,
            "already exists (synth never overwrites)",
        ));
    }
    let (parent, tmp) = temp_dir(out)?;
    check_space(&parent, cfg.images())?;
    let _ = std::fs::remove_dir_all(&tmp);
    let plan = Plan::new(cfg);
    let bar = progress_bar(cfg.images(), progress);
    let result = write_images(&plan, &tmp, &bar)
        .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| DataError::io(out, e)));
    bar.finish_and_clear();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    Ok(SynthSummary {
        out: out.display().to_string(),
        layout: cfg.layout,
        classes: cfg.classes,
        train: cfg.classes * cfg.train_per_class,
        val: cfg.classes * cfg.val_per_class,
        unlabeled: cfg.unlabeled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_readable_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            classes: 4,
            train_per_class: 3,
            val_per_class: 2,
            unlabeled: 5,
            seed: 7,
            layout: Format::Folder,
        };
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let s = write_dataset(&a, &cfg, false).unwrap();
        write_dataset(&b, &cfg, false).unwrap();
        assert_eq!((s.train, s.val, s.unlabeled), (12, 8, 5));
        for rel in [
            "train/stripes/00000.png",
            "val/rings/00001.png",
            "unlabeled/00004.png",
            "classes.txt",
        ] {
            assert_eq!(
                std::fs::read(a.join(rel)).unwrap(),
                std::fs::read(b.join(rel)).unwrap(),
                "{rel}"
            );
        }
        let train = crate::open(&a, crate::Split::Train, None).unwrap();
        assert_eq!(train.classes, vec!["stripes", "checker", "dots", "rings"]);
        assert_eq!(train.samples.len(), 12);
        assert_eq!(
            crate::open(&a, crate::Split::Unlabeled, None)
                .unwrap()
                .samples
                .len(),
            5
        );
        // Another seed, other pixels; an existing output is refused, not overwritten.
        let c = dir.path().join("c");
        write_dataset(
            &c,
            &SynthConfig {
                seed: 8,
                ..cfg.clone()
            },
            false,
        )
        .unwrap();
        assert_ne!(
            std::fs::read(a.join("train/stripes/00000.png")).unwrap(),
            std::fs::read(c.join("train/stripes/00000.png")).unwrap()
        );
        assert!(write_dataset(&a, &cfg, false)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
    }

    #[test]
    fn textures_fill_the_image_in_grey() {
        for (k, shape) in SHAPES.iter().enumerate() {
            for seed in 0..5 {
                let img = render(k, seed * 31 + k as u64);
                assert!(
                    img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
                    "{shape}"
                );
                // Both grey levels appear, and in every quadrant (a crop keeps the class).
                for (qx, qy) in [(0, 0), (48, 0), (0, 48), (48, 48)] {
                    let v: Vec<u8> = (qy..qy + 48)
                        .flat_map(|y| (qx..qx + 48).map(move |x| (x, y)))
                        .map(|(x, y)| img.get_pixel(x, y)[0])
                        .collect();
                    let (lo, hi) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
                    let mid = (lo as u16 + hi as u16) / 2;
                    let above =
                        v.iter().filter(|&&p| p as u16 > mid).count() as f64 / v.len() as f64;
                    assert!(
                        hi - lo > 60,
                        "{shape} seed {seed} quadrant ({qx},{qy}): flat"
                    );
                    assert!(
                        (0.01..0.99).contains(&above),
                        "{shape} seed {seed} quadrant ({qx},{qy}): {above}"
                    );
                }
            }
            assert_ne!(render(k, 1).as_raw(), render(k, 2).as_raw(), "{shape}");
        }
    }

    #[test]
    fn eight_hundred_classes_are_ten_families_in_eighty_distinct_bands() {
        assert_eq!(Variant::of(0, 1), Variant::of(3, 1));
        let bands: Vec<Variant> = (0..80).map(|v| Variant::of(v, 80)).collect();
        for (i, a) in bands.iter().enumerate() {
            assert!(
                a.period.start >= 9.0 && a.period.end <= 18.0 + 1e-4,
                "{a:?}"
            );
            assert!(a.level.start >= 0.15 && a.level.end <= 0.85 + 1e-4, "{a:?}");
            assert!(bands[..i].iter().all(|b| b != a), "band {i} repeats");
        }
        assert_eq!(class_variant(799, 800), (9, Variant::of(79, 80)));
        assert_eq!(class_name(799, 800), "triangles-079");
        assert_eq!(class_name(3, 10), "rings");
    }
}
