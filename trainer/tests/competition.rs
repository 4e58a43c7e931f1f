//! The competition's shape at a size CI affords: 800 classes (indices past a byte) through synth,
//! the label tensors, kNN, the linear probe, label-request and merge-labels, in the competition
//! and folder layouts. The STL-10 layout stores labels as single bytes (1..=10 in STL-10 itself),
//! so it cannot hold 800 classes and is not part of this.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{last_json, run, stderr, venv_python};

const CLASSES: usize = 800;

/// `moco-train synth` in `layout`: 800 classes × 1 train, × 1 val, 300 unlabeled.
fn synth(dir: &Path, layout: &str) -> PathBuf {
    let out = dir.join(layout);
    let o = run(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--layout",
        layout,
        "--classes",
        &CLASSES.to_string(),
        "--train-per-class",
        "1",
        "--val-per-class",
        "1",
        "--unlabeled",
        "300",
        "--seed",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// The two layouts of one generated set and a two-step encoder trained on the competition one.
struct Sets {
    _dir: tempfile::TempDir,
    competition: PathBuf,
    folder: PathBuf,
    encoder: PathBuf,
}

fn sets() -> &'static Sets {
    static SETS: OnceLock<Sets> = OnceLock::new();
    SETS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let competition = synth(dir.path(), "competition");
        let folder = synth(dir.path(), "folder");
        let run_dir = dir.path().join("run");
        let mut args = common::pretrain_args(&run_dir, &["--steps", "2", "--batch-size", "16"]);
        let data = args.iter().position(|a| a == "--data").unwrap() + 1;
        args[data] = competition.display().to_string();
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        Sets {
            _dir: dir,
            competition,
            folder,
            encoder: run_dir.join("encoder.safetensors"),
        }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `moco-train CMD --encoder E --data COMPETITION EXTRA… --threads 1 --json`.
fn on_competition(sets: &Sets, cmd: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        cmd,
        "--encoder",
        s(&sets.encoder),
        "--data",
        s(&sets.competition),
    ];
    args.extend(extra);
    args.extend(["--threads", "1", "--json"]);
    run(&args)
}

/// Rows of a CSV after its header, split on commas (no field here holds one).
fn rows(p: &Path) -> Vec<Vec<String>> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn both_layouts_hold_the_same_800_classes() {
    let sets = sets();
    let comp = datasets::open(&sets.competition, datasets::Split::Train, None).unwrap();
    let folder = datasets::open(&sets.folder, datasets::Split::Train, None).unwrap();
    assert_eq!(comp.format, datasets::Format::Competition);
    assert_eq!(
        (comp.classes.len(), folder.classes.len()),
        (CLASSES, CLASSES)
    );
    assert_eq!(folder.classes[799], "triangles-079");
    // Numbered images are shuffled across classes; each is the folder set's image of its class.
    let labels: Vec<usize> = comp.samples.iter().map(|x| x.label.unwrap()).collect();
    assert_ne!(labels, (0..CLASSES).collect::<Vec<_>>());
    assert!(labels[..20].windows(2).any(|w| w[0] != w[1]));
    let mut per_class = vec![0; CLASSES];
    for l in &labels {
        per_class[*l] += 1;
    }
    assert!(per_class.iter().all(|&n| n == 1), "{per_class:?}");
    let bytes = |x: &datasets::Sample| match &x.source {
        datasets::ImageSource::File(p) => fs::read(p).unwrap(),
        _ => unreachable!(),
    };
    for x in comp
        .samples
        .iter()
        .filter(|x| x.label.unwrap() >= 700)
        .take(5)
    {
        let k = x.label.unwrap();
        let mine = bytes(x);
        assert!(
            folder
                .samples
                .iter()
                .filter(|y| y.label == Some(k))
                .any(|y| bytes(y) == mine),
            "{} (class {k}) is not an image of class {k} in the folder layout",
            x.name
        );
    }
}

#[test]
fn knn_and_the_linear_probe_score_800_classes_in_both_layouts() {
    let sets = sets();
    let tmp = tempfile::tempdir().unwrap();
    let o = on_competition(sets, "knn", &["--k", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["n"], CLASSES);
    // In the folder layout the probe's --knn scores the same features (one pass, not two).
    for (root, knn) in [(&sets.competition, None), (&sets.folder, Some("--knn"))] {
        let out = tmp.path().join(root.file_name().unwrap());
        let mut extra = vec!["--fast", "--epochs", "2", "--json"];
        extra.extend(knn);
        let mut args = common::linear_args(&sets.encoder, &out, &extra);
        let data = args.iter().position(|a| a == "--data").unwrap() + 1;
        args[data] = root.display().to_string();
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let j = last_json(&o);
        assert!(j["top5"].as_f64().unwrap() >= j["top1"].as_f64().unwrap());
        assert_eq!(j["knn_top1"].is_number(), knn.is_some());
        let preds = rows(&out.join("val_predictions.csv"));
        assert_eq!(preds.len(), CLASSES);
        let labels: Vec<usize> = preds.iter().map(|r| r[2].parse().unwrap()).collect();
        assert_eq!(*labels.iter().max().unwrap(), CLASSES - 1);
        assert!(preds
            .iter()
            .all(|r| r[1].parse::<usize>().unwrap() < CLASSES));
        let cls = models::ClassifierFile::load(&out.join("classifier.safetensors"), 512).unwrap();
        assert_eq!(cls.head.fc.out_features, CLASSES);
    }
}

#[test]
fn a_request_over_800_classes_merges_into_an_800_class_label_tensor() {
    let sets = sets();
    let tmp = tempfile::tempdir().unwrap();
    let req = tmp.path().join("req.csv");
    let o = on_competition(
        sets,
        "label-request",
        &[
            "--budget",
            "100",
            "--strategy",
            "balanced",
            "--k",
            "20",
            "--out",
            s(&req),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        last_json(&o)["class_counts"].as_object().unwrap().len(),
        CLASSES
    );
    // The labeler answers with class indices counting down from 799.
    let picked = rows(&req);
    assert_eq!(picked.len(), 100);
    let mut answer = String::from("image,label\n");
    for (i, r) in picked.iter().enumerate() {
        answer.push_str(&format!("{},{}\n", r[2], CLASSES - 1 - i));
    }
    let labels = tmp.path().join("labels.csv");
    fs::write(&labels, answer).unwrap();
    let merged = tmp.path().join("merged");
    let o = run(&[
        "merge-labels",
        "--data",
        s(&sets.competition),
        "--request",
        s(&req),
        "--labels",
        s(&labels),
        "--out",
        s(&merged),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tensor = merged.join("train_label_tensor.pt");
    let new = datasets::pt_labels::read_label_tensor(&tensor).unwrap();
    assert_eq!(new.len(), CLASSES + 100);
    // Appended in the pool's order: the answered labels 700..=799, each once.
    let mut added = new[CLASSES..].to_vec();
    added.sort();
    assert_eq!(added, (700..800).collect::<Vec<i64>>());
    assert!(merged.join(format!("train/{}.png", CLASSES + 99)).exists());
    torch_reads(&tensor, &new);
}

/// `torch.load(weights_only=True)` reads the tensor with the same labels.
fn torch_reads(tensor: &Path, want: &[i64]) {
    let py = venv_python();
    let o = std::process::Command::new(&py)
        .args([
            "-c",
            "import sys, torch\n\
             t = torch.load(sys.argv[1], weights_only=True)\n\
             assert t.dtype == torch.int64 and t.dim() == 1, (t.dtype, t.shape)\n\
             print(','.join(map(str, t.tolist())))",
            s(tensor),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", py.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<i64> = String::from_utf8_lossy(&o.stdout)
        .trim()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(got, want);
}
