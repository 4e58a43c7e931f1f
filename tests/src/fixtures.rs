//! Inputs shared by the integration tests: real photos when the shared dataset is present,
//! deterministic generated images otherwise, and checkpoints with realistic statistics.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use models::{Classifier, Preprocess, ResNetDesc, TensorMap};
use models_tch::{convert::data_to_tensor, load_into, ClassifierModule, ResNet};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// `../shared/data/imagenette96` beside the checkout (or `$MOCO_IMAGENETTE`), when present.
pub fn imagenette() -> Option<PathBuf> {
    let p = std::env::var_os("MOCO_IMAGENETTE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::python::repo_root().join("../shared/data/imagenette96"));
    p.join("val").is_dir().then_some(p)
}

/// A deterministic 96×96-ish image: smooth gradients, a disc and stripes, varied by `seed`.
pub fn synthetic_image(seed: u32, w: u32, h: u32) -> RgbImage {
    let s = seed as f32;
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let d = ((fx - 0.3 - 0.05 * (s % 7.0)).powi(2) + (fy - 0.5).powi(2)).sqrt();
        let disc = if d < 0.2 + 0.01 * (s % 5.0) {
            90.0
        } else {
            0.0
        };
        let stripes = if ((x + seed * 3) / (3 + seed % 4)).is_multiple_of(2) {
            40.0
        } else {
            0.0
        };
        let r = (fx * 160.0 + disc + s * 11.0) % 256.0;
        let g = (fy * 200.0 + stripes + s * 29.0) % 256.0;
        let b = ((fx + fy) * 90.0 + disc * 0.5 + s * 53.0) % 256.0;
        Rgb([r as u8, g as u8, b as u8])
    })
}

/// `n` image files to test on: real photos (first of each class in turn) or generated PNGs
/// written into `dir`. The bool says which.
pub fn test_images(dir: &Path, n: usize) -> Result<(Vec<PathBuf>, bool)> {
    if let Some(root) = imagenette() {
        let data = datasets::open(&root, datasets::Split::Val, None)?;
        let per_class = n.div_ceil(data.classes.len().max(1));
        let mut picked = Vec::new();
        for k in 0..data.classes.len() {
            picked.extend(
                data.samples
                    .iter()
                    .filter(|s| s.label == Some(k))
                    .take(per_class)
                    .filter_map(|s| match &s.source {
                        datasets::ImageSource::File(p) => Some(p.clone()),
                        _ => None,
                    }),
            );
        }
        picked.truncate(n);
        return Ok((picked, true));
    }
    eprintln!("note: ../shared/data/imagenette96 not found; using generated images");
    let mut out = Vec::new();
    for i in 0..n {
        let p = dir.join(format!("gen{i}.png"));
        synthetic_image(i as u32, 96, 96)
            .save(&p)
            .context("writing a generated image")?;
        out.push(p);
    }
    Ok((out, false))
}

/// The eval-transformed batch `[n, 3, crop, crop]` in [0,1].
pub fn eval_batch(paths: &[PathBuf], p: &Preprocess) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for path in paths {
        let img = datasets::decode::decode_file(path)?;
        out.extend(datasets::transform::eval_tensor(img, p));
    }
    Ok(out)
}

/// libtorch's logits for a checkpoint in eval mode, normalisation included, on `device`.
pub fn tch_logits(
    encoder: &Path,
    classifier: &Path,
    images: &[f32],
    n: usize,
    p: &Preprocess,
    device: Device,
) -> Result<Tensor> {
    let enc = TensorMap::load(encoder)?;
    let cls = TensorMap::load(classifier)?;
    let desc = ResNetDesc::new(ResNetDesc::detect_arch(&enc, "encoder")?);
    let classes = cls.get("fc.bias").context("fc.bias")?.shape[0];
    let head = Classifier::new(desc.feature_dim, classes);
    let vs = VarStore::new(device);
    let net = ResNet::new(&vs.root(), &desc, 1);
    let fc = ClassifierModule::new(&vs.root(), &head);
    load_into(
        &vs.variables(),
        &enc,
        &desc.tensors(),
        "encoder",
        "backbone",
        |n| n.starts_with("fc."),
    )?;
    load_into(
        &vs.variables(),
        &cls,
        &head.tensors(),
        "classifier",
        "classifier",
        |_| false,
    )?;
    let c = p.crop as i64;
    let x = Tensor::from_slice(images)
        .reshape([n as i64, 3, c, c])
        .to_device(device);
    let mean = Tensor::from_slice(&p.mean)
        .reshape([1, 3, 1, 1])
        .to_device(device);
    let std = Tensor::from_slice(&p.std)
        .reshape([1, 3, 1, 1])
        .to_device(device);
    let logits = tch::no_grad(|| fc.forward(&net.forward_t(&((x - mean) / std), false)));
    Ok(logits.to_device(Device::Cpu).to_kind(Kind::Float))
}

pub fn tensor_from(map: &TensorMap, name: &str) -> Result<Tensor> {
    Ok(data_to_tensor(
        map.get(name).with_context(|| format!("no `{name}`"))?,
    ))
}
