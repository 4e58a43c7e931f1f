//! `label-request` and `merge-labels` end to end on small generated data, in the three layouts,
//! with the bad inputs they must refuse.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{data, fails_with, pretrain_args, run, stderr};

/// A two-step pretraining run: an encoder to rank with (its quality does not matter here).
fn encoder() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("run");
        let args = pretrain_args(&out, &["--steps", "2"]);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (d, out.join("encoder.safetensors"))
    })
    .1
}

fn last_json(out: &std::process::Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(s.trim().lines().last().unwrap()).unwrap()
}

/// The request CSV's rows as (rank, index, image, predicted).
fn read_request(p: &Path) -> Vec<(usize, usize, String, String)> {
    let text = fs::read_to_string(p).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("rank,index,image,score,predicted,confidence")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 6, "{l}");
            let score: f64 = f[3].parse().unwrap();
            let conf: f64 = f[5].parse().unwrap();
            assert!(score.is_finite() && (0.0..=1.0).contains(&conf), "{l}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].into(),
                f[4].into(),
            )
        })
        .collect()
}

/// Every file under `root` with its size and modification time: the input must not change.
fn listing(root: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                m.insert(e.path(), (md.len(), md.modified().unwrap()));
            }
        }
    }
    m
}

#[test]
fn every_strategy_writes_a_ranked_request_and_bad_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = encoder().to_str().unwrap().to_string();
    let d = data();
    for strategy in ["entropy", "margin", "contrastive", "kcenter", "balanced"] {
        let out = tmp.path().join(format!("{strategy}.csv"));
        let o = run(&[
            "label-request",
            "--encoder",
            &enc,
            "--data",
            &d,
            "--budget",
            "9",
            "--strategy",
            strategy,
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "1",
            "--k",
            "5",
            "--json",
        ]);
        assert!(o.status.success(), "{strategy}: {}", stderr(&o));
        let rows = read_request(&out);
        assert_eq!(rows.len(), 9, "{strategy}");
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=9).collect::<Vec<_>>()
        );
        let mut idx: Vec<usize> = rows.iter().map(|r| r.1).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx.len(), 9, "{strategy}: an image requested twice");
        for (_, i, image, _) in &rows {
            assert_eq!(*image, format!("unlabeled/{i:05}.png"), "{strategy}");
        }
        let j = last_json(&o);
        assert_eq!(j["budget"], 9);
        assert_eq!(j["probabilities"], "knn");
        let counts: u64 = j["class_counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(counts, 9);
        if strategy == "balanced" {
            // 3 predicted classes, 3 each whenever every class has 3 candidates.
            assert!(
                j["max_per_class"].as_u64().unwrap() - j["min_per_class"].as_u64().unwrap() <= 1
                    || j["min_per_class"] == 0,
                "{j}"
            );
        }
    }

    let out = tmp.path().join("r.csv");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "label-request",
            "--encoder",
            &enc,
            "--data",
            &d,
            "--strategy",
            "entropy",
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let call = |extra: &[&str], needle: &str| {
        let args = base(extra);
        fails_with(&args, needle);
    };
    call(
        &["--budget", "25"],
        "--budget 25: the `unlabeled` split holds only 24 images",
    );
    call(&["--budget", "0"], "--budget");
    // Classifiers that do not fit: another class count, another arch's feature width.
    for (name, rows, cols, needle) in [
        ("five.safetensors", 5, 512, "5 classes, the dataset has 3"),
        (
            "r50.safetensors",
            3,
            2048,
            "the encoder gives 512-d features",
        ),
    ] {
        let p = tmp.path().join(name);
        let mut m = models::TensorMap::new();
        let t = |shape: Vec<usize>| {
            let n = shape.iter().product();
            models::weights::TensorData::from_f32(shape, &vec![0.0; n])
        };
        m.insert("fc.weight", t(vec![rows, cols]));
        m.insert("fc.bias", t(vec![rows]));
        m.save(&p).unwrap();
        call(
            &["--budget", "3", "--classifier", p.to_str().unwrap()],
            needle,
        );
    }
    assert!(!out.exists(), "a failed request left a CSV");
}

/// A request for `n` images with the returned labels = class index `i % 3`.
fn request_and_labels(dir: &Path, images: &[String]) -> (PathBuf, PathBuf) {
    let req = dir.join("req.csv");
    let mut r = String::from("rank,index,image,score,predicted,confidence\n");
    let mut l = String::from("image,label\n");
    for (i, name) in images.iter().enumerate() {
        let index: usize = name
            .rsplit(['/', '#'])
            .next()
            .unwrap()
            .trim_end_matches(".png")
            .parse()
            .unwrap();
        r.push_str(&format!("{},{index},{name},0.5,x,0.5\n", i + 1));
        l.push_str(&format!("{name},{}\n", i % 3));
    }
    fs::write(&req, r).unwrap();
    let labels = dir.join("labels.csv");
    fs::write(&labels, l).unwrap();
    (req, labels)
}

fn merge_args<'a>(root: &'a Path, req: &'a Path, labels: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let s = |p: &'a Path| p.to_str().unwrap();
    vec![
        "merge-labels",
        "--data",
        s(root),
        "--request",
        s(req),
        "--labels",
        s(labels),
        "--out",
        s(out),
    ]
}

fn merge(root: &Path, req: &Path, labels: &Path, out: &Path) -> std::process::Output {
    let mut args = merge_args(root, req, labels, out);
    args.push("--json");
    run(&args)
}

#[test]
fn merge_labels_in_the_folder_layout_and_its_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(data());
    let before = listing(&root);
    let images: Vec<String> = [3, 7, 11, 20]
        .iter()
        .map(|i| format!("unlabeled/{i:05}.png"))
        .collect();
    let (req, labels) = request_and_labels(tmp.path(), &images);
    let out = tmp.path().join("merged");
    let o = merge(&root, &req, &labels, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert_eq!(
        (j["train_before"].as_u64(), j["train_after"].as_u64()),
        (Some(24), Some(28))
    );
    let classes: Vec<String> = datasets::open(&root, datasets::Split::Train, None)
        .unwrap()
        .classes;
    let merged = datasets::open(&out, datasets::Split::Train, None).unwrap();
    assert_eq!(merged.samples.len(), 28);
    for (i, name) in images.iter().enumerate() {
        let file = name.trim_start_matches("unlabeled/");
        let to = out
            .join("train")
            .join(&classes[i % 3])
            .join(format!("labeled-{file}"));
        assert_eq!(
            fs::read(&to).unwrap(),
            fs::read(root.join(name)).unwrap(),
            "{}",
            to.display()
        );
    }
    assert_eq!(listing(&root), before, "merge-labels changed its input");

    // Refusals: each a one-line error, and no output folder left behind.
    let bad = |rows: &str, needle: &str| {
        fs::write(&labels, format!("image,label\n{rows}")).unwrap();
        let o2 = tmp.path().join("refused");
        fails_with(&merge_args(&root, &req, &labels, &o2), needle);
        assert!(!o2.exists());
    };
    bad(
        "unlabeled/00004.png,0\n",
        "`unlabeled/00004.png` was not requested",
    );
    bad(
        "unlabeled/00003.png,0\nunlabeled/00003.png,1\n",
        "`unlabeled/00003.png` is labeled twice",
    );
    bad("unlabeled/00003.png,zebra\n", "unknown class `zebra`");
    bad("unlabeled/00003.png,7\n", "unknown class `7`");
    bad("", "no labels");
    // A return cut short is refused; --partial merges what came back.
    bad(
        "unlabeled/00003.png,1\n",
        "3 of the 4 requested images have no label (first: `unlabeled/",
    );
    let some = tmp.path().join("partial");
    let mut args = merge_args(&root, &req, &labels, &some);
    args.extend(["--partial", "--json"]);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["train_after"].as_u64(), Some(25));
    fs::write(&labels, "image,label\nunlabeled/00003.png,1\n").unwrap();
    fails_with(&merge_args(&root, &req, &labels, &out), "already exists");
    // A request that does not match the dataset.
    fs::write(&req, "rank,index,image\n1,5,unlabeled/00003.png\n").unwrap();
    fails_with(
        &merge_args(&root, &req, &labels, &tmp.path().join("x")),
        "is not image 5 of the `unlabeled` split",
    );
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp-merge"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The competition layout built from the generated images: numbered PNGs and label tensors.
fn competition_root(dir: &Path) -> PathBuf {
    let src = PathBuf::from(data());
    let root = dir.join("comp");
    for split in ["train", "val"] {
        let s = datasets::open(&src, split.parse().unwrap(), None).unwrap();
        fs::create_dir_all(root.join(split)).unwrap();
        let mut labels = Vec::new();
        for (i, x) in s.samples.iter().enumerate() {
            let datasets::ImageSource::File(p) = &x.source else {
                unreachable!()
            };
            fs::copy(p, root.join(split).join(format!("{i}.png"))).unwrap();
            labels.push(x.label.unwrap() as i64);
        }
        datasets::pt_labels::write_label_tensor(
            &root.join(format!("{split}_label_tensor.pt")),
            &labels,
        )
        .unwrap();
    }
    fs::create_dir_all(root.join("unlabeled")).unwrap();
    for i in 0..24 {
        fs::copy(
            src.join(format!("unlabeled/{i:05}.png")),
            root.join(format!("unlabeled/{i}.png")),
        )
        .unwrap();
    }
    root
}

#[test]
fn merge_labels_appends_numbered_images_and_extends_the_label_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let root = competition_root(tmp.path());
    let before = listing(&root);
    let old = datasets::pt_labels::read_label_tensor(&root.join("train_label_tensor.pt")).unwrap();
    let images: Vec<String> = [5, 0, 23]
        .iter()
        .map(|i| format!("unlabeled/{i}.png"))
        .collect();
    let (req, labels) = request_and_labels(tmp.path(), &images);
    let out = tmp.path().join("comp2");
    let o = merge(&root, &req, &labels, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    // Numbers continue after the last (24 train images: 24, 25, 26), in the pool's order.
    let new = datasets::pt_labels::read_label_tensor(&out.join("train_label_tensor.pt")).unwrap();
    assert_eq!(&new[..24], &old[..]);
    assert_eq!(&new[24..], &[1, 0, 2]); // unlabeled 0 → label 1, 5 → 0, 23 → 2
    for (n, src) in [(24, 0), (25, 5), (26, 23)] {
        assert_eq!(
            fs::read(out.join(format!("train/{n}.png"))).unwrap(),
            fs::read(root.join(format!("unlabeled/{src}.png"))).unwrap()
        );
    }
    assert_eq!(
        datasets::open(&out, datasets::Split::Train, None)
            .unwrap()
            .samples
            .len(),
        27
    );
    assert_eq!(listing(&root), before, "merge-labels changed its input");
    let log = fs::read_to_string(out.join("merged_labels.csv")).unwrap();
    assert!(log.contains("train/24.png,unlabeled/0.png,"), "{log}");
}

#[test]
fn merge_labels_appends_stl10_records() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("stl");
    fs::create_dir_all(&root).unwrap();
    let rec = |v: u8| vec![v; datasets::layout::STL10_IMAGE_BYTES];
    fs::write(root.join("train_X.bin"), [rec(1), rec(2)].concat()).unwrap();
    fs::write(root.join("train_y.bin"), [3u8, 10]).unwrap();
    fs::write(
        root.join("unlabeled_X.bin"),
        [rec(7), rec(8), rec(9)].concat(),
    )
    .unwrap();
    let before = listing(&root);
    let images = vec![
        "unlabeled_X.bin#2".to_string(),
        "unlabeled_X.bin#0".to_string(),
    ];
    let (req, labels) = request_and_labels(tmp.path(), &images);
    // STL-10's class names are "1".."10" (labels are 1-based on disk): names win over indices.
    fs::write(
        &labels,
        "image,label\nunlabeled_X.bin#2,5\nunlabeled_X.bin#0,10\n",
    )
    .unwrap();
    let out = tmp.path().join("stl2");
    let o = merge(&root, &req, &labels, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    // Pool order: record 0 (class "10"), then record 2 (class "5").
    assert_eq!(
        fs::read(out.join("train_y.bin")).unwrap(),
        vec![3, 10, 10, 5]
    );
    assert_eq!(
        fs::read(out.join("train_X.bin")).unwrap(),
        [rec(1), rec(2), rec(7), rec(9)].concat()
    );
    assert_eq!(listing(&root), before, "merge-labels changed its input");
}

/// A small study on the generated data; flags in `extra` replace the defaults of the same name.
fn study_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--starts", "2"),
        ("--budgets", "0.25,0.5"),
        ("--seeds", "0,1"),
        ("--probe-epochs", "3"),
    ];
    let mut v: Vec<String> = ["label-study", "--data", &data(), "--random-init", "--arch"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(["resnet18", "--threads", "1", "--quiet", "--out"].map(String::from));
    v.push(out.display().to_string());
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn a_label_study_scores_every_request_and_continues_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("study");
    let requests = [
        "--requests",
        "random,random-balanced,entropy,kcenter,balanced",
    ];
    let o = run(&study_args(&out, &[requests[0], requests[1], "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = last_json(&o);
    let results = out.join("results.jsonl");
    let text = fs::read_to_string(&results).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 2 seeds × (the start + 5 requests × 2 budgets); the pool is 3 × (8 − 2) = 18 images.
    assert_eq!(records.len(), 22, "{text}");
    assert_eq!(summary["records"], 22);
    for r in &records {
        assert_eq!(r["pool"], 18);
        let top1 = r["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{r}");
        let budget = r["budget"].as_u64().unwrap();
        assert!(r["request"] == "start" || budget == 5 || budget == 9, "{r}");
        if r["request"] == "random-balanced" {
            let expect = if budget == 9 { (3, 3) } else { (1, 2) };
            assert_eq!(
                (
                    r["min_per_class"].as_u64().unwrap(),
                    r["max_per_class"].as_u64().unwrap()
                ),
                expect,
                "{r}"
            );
        }
    }
    assert!(!out.join("work").exists(), "the work folder is removed");
    let table = fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(table.contains("| 2 | entropy | 5 (28 %) |"), "{table}");
    let png = image::open(out.join("label_study.png")).unwrap();
    assert!(png.width() >= 420, "one panel per start size");

    // Stopped part-way (the last records lost, the one before torn): the same results again.
    let kept: Vec<&str> = text.lines().take(18).collect();
    fs::write(
        &results,
        format!("{}\n{{\"seed\": 1, \"st", kept.join("\n")),
    )
    .unwrap();
    let o = run(&study_args(&out, &requests));
    assert!(o.status.success(), "{}", stderr(&o));
    let without_time = |t: &str| -> Vec<serde_json::Value> {
        t.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("request_cpu_s");
                v
            })
            .collect()
    };
    let again = fs::read_to_string(&results).unwrap();
    assert_eq!(without_time(&again), without_time(&text));
}

#[test]
fn a_label_study_refuses_bad_settings_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("study");
    fails_with(&study_args(&out, &["--budgets", "1.5"]), "--budgets 1.5");
    fails_with(&study_args(&out, &["--starts", "8"]), "leaves no pool");
    fails_with(&study_args(&out, &["--starts", "0"]), "--starts");
    fails_with(
        &study_args(&out, &["--probe-epochs", "0"]),
        "--probe-epochs",
    );
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), to).unwrap();
        }
    }
}

#[test]
fn a_request_from_an_empty_pool_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    for split in ["train", "val"] {
        copy_tree(&Path::new(&data()).join(split), &root.join(split));
    }
    fs::create_dir_all(root.join("unlabeled")).unwrap();
    let out = tmp.path().join("r.csv");
    let args = [
        "label-request",
        "--encoder",
        encoder().to_str().unwrap(),
        "--data",
        root.to_str().unwrap(),
        "--budget",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "1",
    ];
    fails_with(&args, "the `unlabeled` split holds no images");
    assert!(!out.exists());
}
