//! The three layouts, the `.pt` label reader and image decoding, on files made by the real tools
//! (torch.save, PIL, the image crate), including every malformed input the readers must refuse.

use std::fs;
use std::path::{Path, PathBuf};

use datasets::pt_labels::read_label_tensor;
use datasets::{open, Format, ImageSource, Split};
use image::{GrayAlphaImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use moco_tests::fixtures::synthetic_image;
use moco_tests::python::run_script;
use models::{Preprocess, TensorMap};

fn labels_file(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let mut a = vec![p.to_str().unwrap()];
    a.extend_from_slice(args);
    run_script("write_labels.py", &a).unwrap();
    p
}

fn err<T: std::fmt::Debug>(r: datasets::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn pt_label_reader_reads_torch_save_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = labels_file(d, "plain.pt", &["plain", "3", "1", "4", "1", "5", "799"]);
    assert_eq!(read_label_tensor(&plain).unwrap(), vec![3, 1, 4, 1, 5, 799]);
    let strided = labels_file(d, "strided.pt", &["strided"]);
    assert_eq!(
        read_label_tensor(&strided).unwrap(),
        vec![3, 5, 7, 9, 11, 13, 15]
    );

    let e = err(read_label_tensor(&labels_file(d, "float.pt", &["float"])));
    assert!(e.contains("float.pt") && e.contains("int64"), "{e}");
    let e = err(read_label_tensor(&labels_file(d, "matrix.pt", &["matrix"])));
    assert!(e.contains("1-D"), "{e}");

    let marker = d.join("pwned");
    let evil = labels_file(d, "evil.pt", &["evil", marker.to_str().unwrap()]);
    let e = err(read_label_tensor(&evil));
    assert!(
        e.contains("evil.pt") && e.contains("refusing pickle global `posix.system`"),
        "{e}"
    );
    assert!(!marker.exists(), "the malicious pickle ran a command");

    let bytes = fs::read(&plain).unwrap();
    fs::write(d.join("trunc.pt"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(err(read_label_tensor(&d.join("trunc.pt"))).contains("trunc.pt"));
    fs::write(d.join("text.pt"), b"3 1 4 1 5").unwrap();
    assert!(err(read_label_tensor(&d.join("text.pt"))).contains("not a torch.save zip archive"));
    assert!(err(read_label_tensor(&d.join("absent.pt"))).contains("absent.pt"));
}

/// merge-labels extends `train_label_tensor.pt`: what Rust writes, torch.load reads unchanged
/// (and so does our reader), for the small, two-byte, four-byte and eight-byte integer encodings.
#[test]
fn written_label_tensors_load_in_torch() {
    let dir = tempfile::tempdir().unwrap();
    for labels in [
        vec![],
        vec![3, 1, 4, 1, 5, 799],
        (0..70_000).map(|i| i % 800).collect::<Vec<i64>>(),
        vec![0, -1, i64::MAX, 1 << 40],
    ] {
        let p = dir.path().join(format!("w{}.pt", labels.len()));
        datasets::pt_labels::write_label_tensor(&p, &labels).unwrap();
        assert_eq!(read_label_tensor(&p).unwrap(), labels);
        let out = run_script("read_labels.py", &[p.to_str().unwrap()]).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
        assert_eq!(v["dtype"], "torch.int64");
        assert_eq!(v["shape"], serde_json::json!([labels.len()]));
        let got: Vec<i64> = serde_json::from_value(v["values"].clone()).unwrap();
        assert_eq!(got, labels);
    }
}

fn competition(d: &Path, n_train: usize, labels: &[&str]) {
    fs::create_dir_all(d.join("train")).unwrap();
    for i in 0..n_train {
        synthetic_image(i as u32, 96, 96)
            .save(d.join(format!("train/{i}.png")))
            .unwrap();
    }
    let mut args = vec!["plain"];
    args.extend_from_slice(labels);
    labels_file(d, "train_label_tensor.pt", &args);
}

#[test]
fn competition_layout_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    competition(d, 4, &["0", "2", "1", "2"]);
    let s = open(d, Split::Train, None).unwrap();
    assert_eq!(s.format, Format::Competition);
    assert_eq!(
        s.samples
            .iter()
            .map(|s| s.label.unwrap())
            .collect::<Vec<_>>(),
        vec![0, 2, 1, 2]
    );
    assert_eq!(s.samples[3].name, "train/3.png");
    assert_eq!(s.classes.len(), 3);

    labels_file(d, "train_label_tensor.pt", &["plain", "0", "1", "2"]);
    let e = err(open(d, Split::Train, None));
    assert!(
        e.contains("train_label_tensor.pt") && e.contains("3 labels for 4 images"),
        "{e}"
    );

    labels_file(d, "train_label_tensor.pt", &["plain", "0", "1", "2", "-1"]);
    assert!(err(open(d, Split::Train, None)).contains("negative"));

    labels_file(d, "train_label_tensor.pt", &["plain", "0", "1", "2", "7"]);
    fs::write(d.join("classes.txt"), "0\ta\n1\tb\n2\tc\n").unwrap();
    let e = err(open(d, Split::Train, None));
    assert!(
        e.contains("label 7 of image 3 is out of range for 3 classes"),
        "{e}"
    );
    fs::remove_file(d.join("classes.txt")).unwrap();

    fs::remove_file(d.join("train/2.png")).unwrap();
    let e = err(open(d, Split::Train, None));
    assert!(e.contains("2.png is missing"), "{e}");

    let e = err(open(d, Split::Val, None));
    assert!(e.contains("no `val` split"), "{e}");
    fs::create_dir_all(d.join("unlabeled")).unwrap();
    let e = err(open(d, Split::Unlabeled, None));
    assert!(e.contains("holds no images"), "{e}");

    synthetic_image(2, 96, 96)
        .save(d.join("train/2.png"))
        .unwrap();
    fs::remove_file(d.join("train_label_tensor.pt")).unwrap();
    let e = err(open(d, Split::Train, Some(Format::Competition)));
    assert!(e.contains("train_label_tensor.pt"), "{e}");
}

#[test]
fn stl10_binaries_are_column_major_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two images; pixel (x, y) of channel c holds (c*50 + x + 2*y) % 256 for image 0.
    let mut raw = vec![0u8; 2 * 3 * 96 * 96];
    for c in 0..3 {
        for x in 0..96 {
            for y in 0..96 {
                raw[c * 9216 + x * 96 + y] = ((c * 50 + x + 2 * y) % 256) as u8;
            }
        }
    }
    fs::write(d.join("train_X.bin"), &raw).unwrap();
    fs::write(d.join("train_y.bin"), [1u8, 10]).unwrap();
    let s = open(d, Split::Train, None).unwrap();
    assert_eq!(s.format, Format::Stl10);
    assert_eq!(
        s.samples
            .iter()
            .map(|s| s.label.unwrap())
            .collect::<Vec<_>>(),
        vec![0, 9]
    );
    let img = datasets::decode::load(&s.samples[0].source).unwrap();
    assert_eq!(
        img.get_pixel(5, 7).0,
        [(5 + 14) as u8, (50 + 19) as u8, (100 + 19) as u8]
    );
    assert!(matches!(
        &s.samples[1].source,
        ImageSource::Stl10 { index: 1, .. }
    ));
    assert_eq!(s.samples[1].name, "train_X.bin#1");

    fs::write(d.join("train_y.bin"), [1u8, 11]).unwrap();
    assert!(err(open(d, Split::Train, None)).contains("label 11 of image 1 is outside 1..10"));
    fs::write(d.join("train_y.bin"), [1u8]).unwrap();
    assert!(err(open(d, Split::Train, None)).contains("1 labels for 2 images"));
    fs::write(d.join("train_X.bin"), &raw[..1000]).unwrap();
    assert!(err(open(d, Split::Train, None)).contains("not a multiple of 27648"));
    // `val` means `test` for stl10.
    assert!(err(open(d, Split::Val, None)).contains("test_X.bin"));
}

#[test]
fn folder_layout_with_classes_txt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (class, n) in [("zebra", 2), ("apple", 1)] {
        fs::create_dir_all(d.join("val").join(class)).unwrap();
        for i in 0..n {
            synthetic_image(i, 96, 96)
                .save(d.join(format!("val/{class}/{i}.png")))
                .unwrap();
        }
    }
    fs::write(d.join("val/zebra/notes.txt"), "not an image").unwrap();
    let s = open(d, Split::Val, None).unwrap();
    assert_eq!(s.classes, vec!["apple", "zebra"]);
    assert_eq!(s.samples.len(), 3);
    // classes.txt decides the order when present.
    fs::write(d.join("classes.txt"), "0\tzebra\tn1\n1\tapple\tn2\n").unwrap();
    let s = open(d, Split::Val, None).unwrap();
    assert_eq!(s.classes, vec!["zebra", "apple"]);
    assert_eq!(s.samples[0].label, Some(0));
    assert_eq!(s.samples[0].name, "val/zebra/0.png");
    fs::write(d.join("classes.txt"), "0\tzebra\n").unwrap();
    assert!(err(open(d, Split::Val, None)).contains("`apple` is not in"));
    fs::write(d.join("classes.txt"), "0\tzebra\n0\tapple\n").unwrap();
    assert!(err(open(d, Split::Val, None)).contains("each once"));
    assert!(err(open(&d.join("nope"), Split::Val, None)).contains("not a directory"));
}

#[test]
fn image_modes_are_converted_like_pil_and_bad_files_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = synthetic_image(5, 40, 30);
    let gray: GrayImage = ImageBuffer::from_fn(40, 30, |x, y| Luma([base.get_pixel(x, y).0[1]]));
    let ga: GrayAlphaImage = ImageBuffer::from_fn(40, 30, |x, y| {
        image::LumaA([base.get_pixel(x, y).0[0], 128])
    });
    let rgba: RgbaImage = ImageBuffer::from_fn(40, 30, |x, y| {
        let p = base.get_pixel(x, y).0;
        Rgba([p[0], p[1], p[2], (x * 6) as u8])
    });
    gray.save(d.join("gray.png")).unwrap();
    ga.save(d.join("gray_alpha.png")).unwrap();
    rgba.save(d.join("rgba.png")).unwrap();
    base.save(d.join("rgb.png")).unwrap();
    run_script(
        "write_palette_png.py",
        &[d.join("palette.png").to_str().unwrap()],
    )
    .unwrap();
    let names = ["gray", "gray_alpha", "rgba", "rgb", "palette"];
    let paths: Vec<PathBuf> = names.iter().map(|n| d.join(format!("{n}.png"))).collect();

    // Same pixels as PIL's convert("RGB") (the eval transform at 40×30 → resize 30, crop 30).
    let p = Preprocess {
        resize: 30,
        crop: 30,
        ..Preprocess::default()
    };
    let ours = moco_tests::fixtures::eval_batch(&paths, &p).unwrap();
    let out = d.join("pil.safetensors");
    let mut args = vec![
        "--resize",
        "30",
        "--crop",
        "30",
        "--out",
        out.to_str().unwrap(),
    ];
    let strs: Vec<String> = paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    args.extend(strs.iter().map(String::as_str));
    run_script("eval_transform.py", &args).unwrap();
    let pil = TensorMap::load(&out).unwrap();
    for (i, chunk) in ours.chunks(3 * 30 * 30).enumerate() {
        assert_eq!(
            chunk,
            pil.get(&format!("image.{i}")).unwrap().to_f32().as_slice(),
            "{}",
            names[i]
        );
    }

    // 16-bit: scaled to 8 bits (v·255/65535, rounded).
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(8, 8, |x, y| {
        Rgb([(x * 8000) as u16, (y * 9000) as u16, 65535])
    });
    deep.save(d.join("deep.png")).unwrap();
    let img: RgbImage = datasets::decode::decode_file(&d.join("deep.png")).unwrap();
    assert_eq!(
        img.get_pixel(3, 5).0,
        [
            (24000.0f64 * 255.0 / 65535.0).round() as u8,
            (45000.0f64 * 255.0 / 65535.0).round() as u8,
            255
        ]
    );

    // Corrupt, truncated, empty and non-image files: errors that name the file.
    let good = fs::read(d.join("rgb.png")).unwrap();
    fs::write(d.join("truncated.png"), &good[..good.len() / 2]).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid..mid + 16].fill(0xAB);
    fs::write(d.join("corrupt.png"), &flipped).unwrap();
    fs::write(d.join("empty.png"), b"").unwrap();
    fs::write(d.join("text.jpg"), b"hello").unwrap();
    for name in [
        "truncated.png",
        "corrupt.png",
        "empty.png",
        "text.jpg",
        "missing.png",
    ] {
        let e = datasets::decode::decode_file(&d.join(name))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name), "{name}: {e}");
    }
}
