//! The eval transform (datasets::transform, used by moco-infer and the trainer) against
//! torchvision's `Resize → CenterCrop → ToTensor` on PIL images, for 96×96 photos and for sizes
//! that force a real resize (down and up, portrait and landscape) and a non-trivial crop.

use moco_tests::fixtures::{eval_batch, synthetic_image, test_images};
use moco_tests::python::run_script;
use models::{Preprocess, TensorMap};

fn compare(
    p: &Preprocess,
    paths: &[std::path::PathBuf],
    dir: &std::path::Path,
) -> (usize, usize, f32) {
    let ours = eval_batch(paths, p).unwrap();
    let out = dir.join(format!("tv_{}_{}.safetensors", p.resize, p.crop));
    let mut args = vec![
        "--resize".to_string(),
        p.resize.to_string(),
        "--crop".into(),
        p.crop.to_string(),
        "--out".into(),
        out.to_string_lossy().into(),
    ];
    args.extend(paths.iter().map(|p| p.to_string_lossy().into_owned()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    run_script("eval_transform.py", &argv).unwrap();
    let tv = TensorMap::load(&out).unwrap();
    let per = (3 * p.crop * p.crop) as usize;
    let (mut differ, mut total, mut worst) = (0, 0, 0f32);
    for (i, chunk) in ours.chunks(per).enumerate() {
        let theirs = tv.get(&format!("image.{i}")).unwrap().to_f32();
        assert_eq!(theirs.len(), per);
        let bad = chunk
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| (*a - *b).abs() > 0.5 / 255.0)
            .count();
        if bad > 0 {
            eprintln!("  {}: {bad} values differ", paths[i].display());
        }
        for (a, b) in chunk.iter().zip(&theirs) {
            let d = (a - b).abs();
            worst = worst.max(d);
            differ += usize::from(d > 0.5 / 255.0);
            total += 1;
        }
    }
    (differ, total, worst)
}

#[test]
fn eval_transform_matches_torchvision_on_pil() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut paths, real) = test_images(d, 10).unwrap();
    // Non-96 inputs: the real photos (or generated ones) resized by the test, plus odd synthetic sizes.
    for (i, (w, h)) in [(130, 100), (64, 80), (97, 96), (300, 211), (50, 50)]
        .into_iter()
        .enumerate()
    {
        let base = datasets::decode::decode_file(&paths[i]).unwrap();
        let img = image::imageops::resize(&base, w, h, image::imageops::FilterType::CatmullRom);
        let p = d.join(format!("resized{i}.png"));
        img.save(&p).unwrap();
        paths.push(p);
        let p = d.join(format!("synthetic{i}.png"));
        synthetic_image(i as u32 + 40, w, h).save(&p).unwrap();
        paths.push(p);
    }
    for p in [
        Preprocess::default(),
        Preprocess {
            resize: 110,
            crop: 96,
            ..Preprocess::default()
        },
        Preprocess {
            resize: 96,
            crop: 80,
            ..Preprocess::default()
        },
        Preprocess {
            resize: 73,
            crop: 64,
            ..Preprocess::default()
        },
    ] {
        let (differ, total, worst) = compare(&p, &paths, d);
        eprintln!(
            "resize {} crop {}: {differ} of {total} values differ (worst {:.4} = {:.2}/255) on {} images ({})",
            p.resize, p.crop, worst, worst * 255.0, paths.len(), if real { "imagenette96 + resized" } else { "generated" }
        );
        assert_eq!(
            differ, 0,
            "resize {} crop {}: Pillow-exact resize expected",
            p.resize, p.crop
        );
    }
}
