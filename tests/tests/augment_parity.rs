//! The augmentations against torchvision (`tests/python/augment_reference.py`): the deterministic
//! parts image for image (given the same crop box, flip, factors and σ), the random parts in
//! distribution (two-sample Kolmogorov–Smirnov on 20,000 draws, rates within binomial noise) for
//! aug+ and for BYOL's two views, and planted wrong draws (a scale range, swapped views) that the
//! distribution tests must reject.

use std::collections::BTreeMap;

use moco_tests::fixtures::synthetic_image;
use moco_tests::python::run_script;
use models::{TensorData, TensorMap};
use models_tch::convert::tensor_to_data;
use rand::Rng;
use tch::{Device, Kind, Tensor};
use trainer::augment::params::{draw_view, resized_crop_box, AugConfig, Jitter, ViewParams};
use trainer::augment::{ops, Augmenter};
use trainer::runtime::rng::{stream, Purpose};

const SIZE: u32 = 96;

fn load(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// Generated 128×128 sources: crops larger than 96 take the antialiased path, smaller ones the
/// batched grid path, so both are held against torchvision.
fn sources(n: usize) -> Tensor {
    let mut raw = Vec::new();
    for i in 0..n {
        let img = if i % 2 == 0 {
            synthetic_image(i as u32, 128, 128)
        } else {
            image::imageops::resize(
                &datasets::synth::render(i % 10, i as u64),
                128,
                128,
                image::imageops::FilterType::Triangle,
            )
        };
        raw.extend_from_slice(img.as_raw());
    }
    Tensor::from_slice(&raw)
        .view([n as i64, 128, 128, 3])
        .permute([0, 3, 1, 2])
        .contiguous()
}

#[test]
fn deterministic_parts_match_torchvision() {
    let n = 24;
    let images = sources(n);
    let cfg = AugConfig::mocov2(SIZE);
    let mut rng = stream(5, Purpose::Augment, 0);
    // Every image jittered, half gray, half blurred: each op is exercised on several images.
    let params: Vec<ViewParams> = (0..n)
        .map(|i| {
            let mut v = draw_view(&mut rng, &cfg, 128, 128);
            v.crop = resized_crop_box(&mut rng, 128, 128, (0.2, 1.0), cfg.ratio);
            v.jitter = Some(v.jitter.unwrap_or(Jitter {
                order: [3, 2, 1, 0],
                brightness: 1.3,
                contrast: 0.7,
                saturation: 1.2,
                hue: -0.05,
            }));
            v.grayscale = i % 4 == 1;
            v.blur_sigma = (i % 2 == 0).then(|| rng.random_range(0.1f32..2.0));
            v.solarize = i % 3 == 0;
            v
        })
        .collect();
    let boxes: Vec<_> = params.iter().map(|p| p.crop).collect();
    let flips: Vec<bool> = params.iter().map(|p| p.flip).collect();
    let large = boxes
        .iter()
        .filter(|b| b.height > SIZE || b.width > SIZE)
        .count();
    assert!(
        large > 0 && large < n,
        "both resize paths must be exercised ({large}/{n} large)"
    );

    let x01 = images.to_kind(Kind::Float) / 255.0;
    let rrc = ops::resized_crop_flip(&x01, &boxes, &flips, SIZE);
    let jit: Vec<&Jitter> = params.iter().map(|p| p.jitter.as_ref().unwrap()).collect();
    let f = |g: fn(&Jitter) -> f32| jit.iter().map(|j| g(j)).collect::<Vec<f32>>();
    let (fb, fc, fs, fh) = (
        f(|j| j.brightness),
        f(|j| j.contrast),
        f(|j| j.saturation),
        f(|j| j.hue),
    );
    let sigmas: Vec<f32> = params.iter().map(|p| p.blur_sigma.unwrap_or(1.0)).collect();
    let ours = BTreeMap::from([
        ("brightness", ops::adjust_brightness(&rrc, &fb)),
        ("contrast", ops::adjust_contrast(&rrc, &fc)),
        ("saturation", ops::adjust_saturation(&rrc, &fs)),
        ("hue", ops::adjust_hue(&rrc, &fh)),
        (
            "grayscale",
            ops::grayscale(&rrc).expand([-1, 3, -1, -1], false),
        ),
        ("blur", ops::gaussian_blur(&rrc, &sigmas, ops::BLUR_KERNEL)),
        ("solarize", ops::solarize(&rrc, &vec![true; n])),
    ]);

    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    let mut map = TensorMap::new();
    let pixels = Vec::<i64>::try_from(images.to_kind(Kind::Int64).flatten(0, -1)).unwrap();
    map.insert(
        "images",
        TensorData::from_i64(vec![n, 3, 128, 128], &pixels),
    );
    let box_v: Vec<i64> = boxes
        .iter()
        .flat_map(|b| [b.top, b.left, b.height, b.width].map(i64::from))
        .collect();
    map.insert("boxes", TensorData::from_i64(vec![n, 4], &box_v));
    map.insert(
        "flips",
        TensorData::from_i64(
            vec![n],
            &flips.iter().map(|&b| b as i64).collect::<Vec<_>>(),
        ),
    );
    map.insert("x", tensor_to_data(&rrc));
    let fac: Vec<f32> = (0..n).flat_map(|i| [fb[i], fc[i], fs[i], fh[i]]).collect();
    map.insert("factors", TensorData::from_f32(vec![n, 4], &fac));
    map.insert("sigmas", TensorData::from_f32(vec![n], &sigmas));
    map.metadata.insert("size".into(), SIZE.to_string());
    map.metadata
        .insert("taps".into(), ops::BLUR_KERNEL.to_string());
    map.save(&inp).unwrap();
    run_script(
        "augment_reference.py",
        &[
            "deterministic",
            inp.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    )
    .unwrap();
    let reference = load(&out);

    // The resized crop against PIL on uint8 (what aug+ runs on): |Δ| ≤ 1/255 for ≥ 99 % of values.
    let ours8 = (&rrc * 255.0).round();
    let pil = reference["rrc_pil"].to_kind(Kind::Float);
    let diff = (&ours8 - &pil).abs();
    let within = diff
        .le(1.0)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    let max = diff.max().double_value(&[]);
    eprintln!(
        "resized crop vs PIL: {:.3} % of values within 1/255, max {max} /255",
        100.0 * within
    );
    assert!(within >= 0.99, "only {:.3} % within 1/255", 100.0 * within);
    // ... and against torchvision's float tensor path (antialias=True).
    let d = (&rrc - &reference["rrc_tensor"])
        .abs()
        .max()
        .double_value(&[]);
    eprintln!("resized crop vs torchvision tensor resized_crop: max |Δ| {d:.2e}");
    assert!(d < 5e-5, "{d}");

    for (name, t) in &ours {
        let d = (t - &reference[*name]).abs().max().double_value(&[]);
        eprintln!("{name}: max |Δ| {d:.2e}");
        assert!(d < 2e-6, "{name}: max |Δ| {d}");
    }
    // The hue's rounding, each side against the same closed form evaluated in float64: the
    // difference above is two roundings of about the same size (ours reduces the shifted hue
    // mod 6 before adding a sector's offset, torchvision goes through h/6 + 1), and ours must not
    // be the larger: measured 8.0e-7 against torchvision's 9.2e-7.
    let hue64 = ops::adjust_hue(&rrc.to_kind(Kind::Double), &fh);
    let off = |t: &Tensor| {
        (t.to_kind(Kind::Double) - &hue64)
            .abs()
            .max()
            .double_value(&[])
    };
    let (ours_hue, tv_hue) = (off(&ours["hue"]), off(&reference["hue"]));
    eprintln!("hue vs float64: ours {ours_hue:.2e}, torchvision {tv_hue:.2e}");
    assert!(
        ours_hue < 1e-6 && ours_hue <= tv_hue,
        "hue vs float64: ours {ours_hue}, torchvision {tv_hue}"
    );

    // The whole view (crop, jitter in each image's order, grayscale, blur, solarize, flip) against the same
    // ops composed one image at a time: the batching and the order bookkeeping.
    let aug = Augmenter::new(cfg, &Default::default(), Device::Cpu);
    let whole = aug.views_01(&images, &params);
    for i in [0usize, 1, 3, 5, 10] {
        let p = &params[i];
        let mut x = rrc.narrow(0, i as i64, 1);
        let j = p.jitter.unwrap();
        for op in j.order {
            x = match op {
                0 => ops::adjust_brightness(&x, &[j.brightness]),
                1 => ops::adjust_contrast(&x, &[j.contrast]),
                2 => ops::adjust_saturation(&x, &[j.saturation]),
                _ => ops::adjust_hue(&x, &[j.hue]),
            };
        }
        if p.grayscale {
            x = ops::grayscale(&x).expand([-1, 3, -1, -1], false);
        }
        if let Some(s) = p.blur_sigma {
            x = ops::gaussian_blur(&x, &[s], ops::BLUR_KERNEL);
        }
        if p.solarize {
            x = ops::solarize(&x, &[true]);
        }
        let d = (x - whole.narrow(0, i as i64, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-5, "image {i}: batched view differs by {d}");
    }
    // The batched GPU path (every view in one pass: crops as interpolation matrices, jitter in
    // rounds over the whole batch, per-view blur kernels) against the same composition, and
    // against the CPU path: crops, jitter order, grayscale, blur and solarize bookkeeping.
    let mut gpu = Augmenter::new(AugConfig::mocov2(SIZE), &Default::default(), Device::Cpu);
    gpu.use_batched_path();
    let batched = gpu.views_01(&images, &params);
    let cpu = aug.views_01(&images, &params);
    for i in 0..n {
        let d = (batched.narrow(0, i as i64, 1) - whole.narrow(0, i as i64, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-5, "image {i}: batched GPU path differs by {d}");
    }
    let d = (&batched - &cpu).abs().max().double_value(&[]);
    eprintln!("whole views, batched GPU path vs CPU path: max |Δ| {d:.2e}");
    // Rounding only: the host sums the contrast mean in f64 and divides once per pixel.
    assert!(d < 1e-5, "{d}");
}

/// Two-sample Kolmogorov–Smirnov statistic.
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

struct Draws {
    series: BTreeMap<&'static str, Vec<f64>>,
}

fn rust_draws(cfg: &AugConfig, n: usize) -> Draws {
    let mut s: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut rng = stream(9, Purpose::Augment, 0);
    for _ in 0..n {
        let v = draw_view(&mut rng, cfg, 96, 96);
        let c = v.crop;
        s.entry("area")
            .or_default()
            .push((c.height * c.width) as f64 / 9216.0);
        s.entry("log_ratio")
            .or_default()
            .push((c.width as f64 / c.height as f64).ln());
        if let Some(j) = v.jitter {
            s.entry("brightness").or_default().push(j.brightness as f64);
            s.entry("contrast").or_default().push(j.contrast as f64);
            s.entry("saturation").or_default().push(j.saturation as f64);
            s.entry("hue").or_default().push(j.hue as f64);
        }
        s.entry("applied_jitter")
            .or_default()
            .push(v.jitter.is_some() as u8 as f64);
        s.entry("applied_grayscale")
            .or_default()
            .push(v.grayscale as u8 as f64);
        s.entry("applied_blur")
            .or_default()
            .push(v.blur_sigma.is_some() as u8 as f64);
        s.entry("applied_solarize")
            .or_default()
            .push(v.solarize as u8 as f64);
        s.entry("applied_flip")
            .or_default()
            .push(v.flip as u8 as f64);
    }
    Draws { series: s }
}

fn distribution_failures(ours: &Draws, reference: &BTreeMap<String, Tensor>) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, theirs) in reference {
        let theirs = Vec::<f64>::try_from(theirs).unwrap();
        let mine = &ours.series[name.as_str()];
        if name.starts_with("applied_") {
            let (p1, p2) = (mean(mine), mean(&theirs));
            let p = (p1 + p2) / 2.0;
            let se = (p * (1.0 - p) * (1.0 / mine.len() as f64 + 1.0 / theirs.len() as f64)).sqrt();
            eprintln!(
                "{name}: rate {p1:.4} vs torchvision {p2:.4} (4σ = {:.4})",
                4.0 * se
            );
            if (p1 - p2).abs() > 4.0 * se {
                failed.push(name.clone());
            }
        } else {
            let d = ks(mine, &theirs);
            let (n, m) = (mine.len() as f64, theirs.len() as f64);
            // α = 0.001: c(α) = 1.95.
            let crit = 1.95 * ((n + m) / (n * m)).sqrt();
            let (lo, hi) = mine
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            eprintln!("{name}: KS D = {d:.4} (critical {crit:.4}), range [{lo:.4}, {hi:.4}]");
            if d > crit {
                failed.push(name.clone());
            }
        }
    }
    failed
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// torchvision's draws of `pipeline` (`augment_reference.py distribution`).
fn reference_draws(n: usize, pipeline: &str) -> BTreeMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("draws.safetensors");
    run_script(
        "augment_reference.py",
        &[
            "distribution",
            out.to_str().unwrap(),
            &n.to_string(),
            pipeline,
        ],
    )
    .unwrap();
    load(&out)
}

#[test]
fn random_parts_match_torchvision_in_distribution() {
    let n = 20_000;
    let reference = reference_draws(n, "mocov2");
    let failed = distribution_failures(&rust_draws(&AugConfig::mocov2(96), n), &reference);
    assert!(failed.is_empty(), "differ from torchvision: {failed:?}");

    // Planted: torchvision's default scale (0.08, 1) instead of aug+'s (0.2, 1).
    let wrong = AugConfig {
        scale: (0.08, 1.0),
        ..AugConfig::mocov2(96)
    };
    let failed = distribution_failures(&rust_draws(&wrong, n), &reference);
    assert!(
        failed.contains(&"area".to_string()),
        "a wrong scale range went unnoticed"
    );
}

/// BYOL's pair of pipelines (MoCo v3's `augmentation1` and `augmentation2`), each view against
/// its torchvision pipeline; the views swapped must fail on blur and solarize.
#[test]
fn byols_two_views_match_torchvision_in_distribution() {
    let n = 20_000;
    let cfg = AugConfig::byol(96);
    let second = reference_draws(n, "byol2");
    for (view, reference) in [(0, &reference_draws(n, "byol1")), (1, &second)] {
        let failed = distribution_failures(&rust_draws(&cfg.view(view), n), reference);
        assert!(failed.is_empty(), "view {view} differs: {failed:?}");
    }
    // Planted: the first view's pipeline drawn for the second.
    let failed = distribution_failures(&rust_draws(&cfg.view(0), n), &second);
    for part in ["applied_blur", "applied_solarize"] {
        assert!(
            failed.contains(&part.to_string()),
            "swapped views: {failed:?}"
        );
    }
}
