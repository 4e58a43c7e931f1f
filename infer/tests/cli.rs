//! moco-infer end to end on a generated dataset and a random-weight export: ort and tract agree,
//! the CSV format, unlabeled splits, and every bad input it must refuse with a one-line error.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use exporter::{export, ExportOptions, LoadOptions};
use image::{Rgb, RgbImage};
use models::random_weights::{random_backbone, random_classifier};
use models::{Arch, Classifier, ResNetDesc};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moco-infer"))
}

fn image(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * (k + seed) + y * (2 * k + 1) + seed * 31) % 256) as u8;
        Rgb([v(1), v(2), v(3)])
    })
}

/// A resnet18 with random weights and a `classes`-way head, exported to `dir/model.onnx`.
fn random_model(dir: &Path, classes: usize, seed: u64) -> PathBuf {
    let desc = ResNetDesc::new(Arch::Resnet18);
    let enc = dir.join("encoder.safetensors");
    let cls = dir.join("classifier.safetensors");
    random_backbone(&desc, seed).save(&enc).unwrap();
    random_classifier(&Classifier::new(desc.feature_dim, classes), seed)
        .save(&cls)
        .unwrap();
    let model = dir.join("model.onnx");
    export(
        &LoadOptions::new(&enc, Some(&cls)),
        ExportOptions::default(),
        &model,
    )
    .unwrap();
    model
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    for (c, class) in ["ant", "bee", "cat"].iter().enumerate() {
        fs::create_dir_all(root.join("val").join(class)).unwrap();
        for i in 0..4u32 {
            // Mixed sizes: the eval transform resizes and crops the non-96 ones.
            let (w, h) = [(96, 96), (120, 100), (96, 130), (64, 64)][i as usize];
            image(c as u32 * 10 + i, w, h)
                .save(root.join(format!("val/{class}/{i}.png")))
                .unwrap();
        }
    }
    fs::create_dir_all(root.join("unlabeled")).unwrap();
    for i in 0..5u32 {
        image(100 + i, 96, 96)
            .save(root.join(format!("unlabeled/{i}.png")))
            .unwrap();
    }
    let model = random_model(dir.path(), 3, 1);
    Fixture {
        root,
        model,
        _dir: dir,
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bin().args(args).arg("--quiet").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn ort_and_tract_agree_and_write_the_csv() {
    let f = fixture();
    let dir = f.model.parent().unwrap();
    let mut csv = Vec::new();
    for backend in ["ort", "tract"] {
        let pred = dir.join(format!("{backend}.csv"));
        let (ok, stdout, stderr) = run(&[
            "--model",
            s(&f.model),
            "--data",
            s(&f.root),
            "--backend",
            backend,
            "--batch-size",
            "5",
            "--predictions",
            s(&pred),
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let j = last_json(&stdout);
        assert_eq!(j["n"], 12);
        assert_eq!(j["backend"], backend);
        assert_eq!(j["device"], "cpu");
        assert!(j["top1"].as_f64().unwrap() >= 0.0 && j["top5"].as_f64().unwrap() == 1.0);
        assert!(j["images_per_sec"].as_f64().unwrap() > 0.0);
        assert_eq!(j["per_class"].as_array().unwrap().len(), 3);
        csv.push(fs::read_to_string(&pred).unwrap());
    }
    assert_eq!(csv[0], csv[1], "ort and tract predict differently");
    let lines: Vec<&str> = csv[0].lines().collect();
    assert_eq!(lines[0], "image,prediction,label");
    assert_eq!(lines.len(), 13);
    assert!(
        lines[1].starts_with("val/ant/0.png,") && lines[1].ends_with(",0"),
        "{}",
        lines[1]
    );
    assert!(lines[12].starts_with("val/cat/3.png,") && lines[12].ends_with(",2"));
    for l in &lines[1..] {
        let pred: usize = l.split(',').nth(1).unwrap().parse().unwrap();
        assert!(pred < 3);
    }
}

/// The competition's shape: numbered PNGs, a torch.save label tensor and 800 classes, through
/// both backends. Random weights: what is checked is the bookkeeping past a byte of classes.
#[test]
fn eight_hundred_classes_in_the_competition_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("comp");
    let cfg = datasets::synth::SynthConfig {
        classes: 800,
        train_per_class: 0,
        val_per_class: 1,
        unlabeled: 0,
        seed: 2,
        layout: datasets::Format::Competition,
    };
    datasets::synth::write_dataset(&root, &cfg, false).unwrap();
    let model = random_model(dir.path(), 800, 3);
    let mut predicted = Vec::new();
    for backend in ["ort", "tract"] {
        let pred = dir.path().join(format!("{backend}.csv"));
        let (ok, stdout, stderr) = run(&[
            "--model",
            s(&model),
            "--data",
            s(&root),
            "--backend",
            backend,
            "--predictions",
            s(&pred),
            "--json",
        ]);
        assert!(ok, "{stderr}");
        let j = last_json(&stdout);
        assert_eq!(j["n"], 800);
        let per_class = j["per_class"].as_array().unwrap();
        assert_eq!(per_class.len(), 800);
        assert_eq!(per_class[799]["class"], "799");
        assert_eq!(per_class[799]["n"], 1);
        let rows: Vec<Vec<String>> = fs::read_to_string(&pred)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(String::from).collect())
            .collect();
        let labels: Vec<usize> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
        let mut sorted = labels.clone();
        sorted.sort();
        assert_eq!(sorted, (0..800).collect::<Vec<_>>(), "one image per class");
        assert_eq!(rows[0][0], "val/0.png");
        predicted.push(rows.into_iter().map(|r| r[1].clone()).collect::<Vec<_>>());
    }
    // fp32 rounding differs between the backends: a near-tie of 800 random logits may flip.
    let same = predicted[0]
        .iter()
        .zip(&predicted[1])
        .filter(|(a, b)| a == b)
        .count();
    assert!(same >= 792, "ort and tract agree on {same} of 800");
}

#[test]
fn a_predictions_file_past_the_file_size_limit_is_an_error_and_leaves_nothing() {
    use std::os::unix::process::CommandExt;
    let f = fixture();
    let out = f.model.parent().unwrap().join("preds");
    fs::create_dir_all(&out).unwrap();
    let pred = out.join("p.csv");
    let mut cmd = bin();
    cmd.args([
        "--model",
        s(&f.model),
        "--data",
        s(&f.root),
        "--predictions",
        s(&pred),
    ]);
    // SAFETY: setrlimit is async-signal-safe, as a pre_exec hook requires. 200 bytes: the
    // CSV of 12 rows is about 400.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 200,
                rlim_max: 200,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.contains("p.csv") && last.contains("File too large"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "a file was left");
}

#[test]
fn unlabeled_split_gives_predictions_without_accuracy() {
    let f = fixture();
    let pred = f.model.parent().unwrap().join("u.csv");
    let (ok, stdout, stderr) = run(&[
        "--model",
        s(&f.model),
        "--data",
        s(&f.root),
        "--split",
        "unlabeled",
        "--predictions",
        s(&pred),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let j = last_json(&stdout);
    assert_eq!(j["n"], 5);
    assert!(j.get("top1").is_none());
    let text = fs::read_to_string(&pred).unwrap();
    assert!(text.lines().nth(1).unwrap().starts_with("unlabeled/0.png,"));
    assert!(
        text.lines().skip(1).all(|l| l.ends_with(',')),
        "label column must be empty"
    );
}

#[test]
fn bad_inputs_fail_with_one_line_naming_the_culprit() {
    let f = fixture();
    let dir = f.model.parent().unwrap().to_path_buf();
    let model = s(&f.model).to_string();
    let root = s(&f.root).to_string();

    // A corrupt image: an error naming it, and no partial CSV; --skip-bad counts it and goes on.
    let bad = f.root.join("val/bee/1.png");
    fs::write(&bad, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let pred = dir.join("p.csv");
    let (ok, _, stderr) = run(&[
        "--model",
        &model,
        "--data",
        &root,
        "--predictions",
        s(&pred),
    ]);
    assert!(
        !ok && stderr.contains("val/bee/1.png") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    assert!(!pred.exists(), "partial CSV left behind");
    let (ok, stdout, stderr) = run(&[
        "--model",
        &model,
        "--data",
        &root,
        "--skip-bad",
        "--json",
        "--predictions",
        s(&pred),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(last_json(&stdout)["skipped"], 1);
    assert_eq!(last_json(&stdout)["n"], 11);
    assert_eq!(fs::read_to_string(&pred).unwrap().lines().count(), 12);

    let not_onnx = dir.join("junk.onnx");
    fs::write(&not_onnx, b"definitely not protobuf \xff\xff\xff").unwrap();
    let empty = dir.join("emptysplit");
    fs::create_dir_all(empty.join("unlabeled")).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--model".into(),
                s(&not_onnx).into(),
                "--data".into(),
                root.clone(),
            ],
            "junk.onnx",
        ),
        (
            vec![
                "--model".into(),
                s(&dir.join("absent.onnx")).into(),
                "--data".into(),
                root.clone(),
            ],
            "absent.onnx",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--data".into(),
                s(&dir.join("nowhere")).into(),
            ],
            "nowhere",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--data".into(),
                s(&empty).into(),
                "--split".into(),
                "unlabeled".into(),
            ],
            "holds no images",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--data".into(),
                root.clone(),
                "--split".into(),
                "train".into(),
            ],
            "no `train` split",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--data".into(),
                root.clone(),
                "--predictions".into(),
                "/proc/forbidden/p.csv".into(),
            ],
            "--predictions /proc/forbidden/p.csv",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--data".into(),
                root.clone(),
                "--backend".into(),
                "tract".into(),
                "--device".into(),
                "cuda".into(),
            ],
            "--backend tract",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--data".into(),
                root.clone(),
                "--batch-size".into(),
                "0".into(),
            ],
            "--batch-size",
        ),
    ];
    for (args, expect) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = run(&argv);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // A model whose input is not `image` [N,3,96,96]: an encoder-only export has no logits.
    let desc = ResNetDesc::new(Arch::Resnet18);
    let enc = dir.join("enc_only.safetensors");
    random_backbone(&desc, 2).save(&enc).unwrap();
    let feat = dir.join("features.onnx");
    export(
        &LoadOptions::new(&enc, None),
        ExportOptions::default(),
        &feat,
    )
    .unwrap();
    let (ok, _, stderr) = run(&["--model", s(&feat), "--data", &root, "--skip-bad"]);
    assert!(!ok && stderr.contains("no `logits` output"), "{stderr}");
}
