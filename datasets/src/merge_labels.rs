//! `moco-train merge-labels`: a new dataset root = the old one plus the returned labels of a
//! label request, in the old root's layout. Competition: the images are appended to `train/` with
//! numbers continuing after the last (25600, … for the competition's train split) and `train_label_tensor.pt` is extended
//! (torch.load reads it). Folder: the images are copied into their class folders. STL-10: the
//! records are appended to `train_X.bin` / `train_y.bin`. The input root is never written to: the
//! new root is built in a temp folder beside `--out` and renamed at the end; unchanged files are
//! hard links (or copies with `--copy`, or across filesystems).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::layout::{Format, ImageSource, Split, SplitData, STL10_IMAGE_BYTES};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MergeLabelsConfig {
    /// The dataset the request was made from (read only).
    pub data: PathBuf,
    /// Dataset layout; detected when omitted.
    pub format: Option<Format>,
    /// The request CSV written by `label-request`.
    pub request: PathBuf,
    /// The returned labels: a CSV with columns `image` (as in the request) and `label` (a class
    /// name, or a class index when no class has that name).
    pub labels: PathBuf,
    /// The new dataset root (must not exist).
    pub out: PathBuf,
    /// The split the request was made from.
    pub split: Split,
    /// The labeled split the images join.
    pub train_split: Split,
    /// Copy unchanged files instead of hard-linking them.
    pub copy: bool,
    /// Merge the labeled images of a request some of whose images came back without a label
    /// (without it, such a return is refused: a labeler's file cut short looks the same).
    #[serde(default)]
    pub partial: bool,
    /// Progress bars on stderr.
    pub progress: bool,
}

impl MergeLabelsConfig {
    /// The merge of `labels` answering `request` (of `data`'s unlabeled split) into a new root
    /// `out` in `data`'s layout: the defaults of `moco-train merge-labels`.
    pub fn for_files(data: &Path, request: &Path, labels: &Path, out: &Path) -> Self {
        MergeLabelsConfig {
            data: data.to_path_buf(),
            format: None,
            request: request.to_path_buf(),
            labels: labels.to_path_buf(),
            out: out.to_path_buf(),
            split: Split::Unlabeled,
            train_split: Split::Train,
            copy: false,
            partial: false,
            progress: false,
        }
    }
}

/// One image to add: its source in the pool and its class index.
struct Addition {
    name: String,
    source: ImageSource,
    label: usize,
}

/// The rows of a CSV as maps from column name to value, with 1-based line numbers.
fn read_csv(
    path: &Path,
    flag: &str,
    columns: &[&str],
) -> Result<Vec<(usize, HashMap<String, String>)>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("{flag} {}", path.display()))?;
    let header: Vec<String> = r
        .headers()
        .with_context(|| format!("{flag} {}: unreadable header", path.display()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    for c in columns {
        if !header.iter().any(|h| h == c) {
            bail!(
                "{flag} {}: no `{c}` column (the header is `{}`)",
                path.display(),
                header.join(",")
            );
        }
    }
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{flag} {}: line {}", path.display(), i + 2))?;
        let row = header
            .iter()
            .cloned()
            .zip(rec.iter().map(|v| v.trim().to_string()))
            .collect();
        rows.push((i + 2, row));
    }
    Ok(rows)
}

/// The requested images, checked against the pool they were chosen from.
fn read_request(a: &MergeLabelsConfig, pool: &SplitData) -> Result<HashMap<String, usize>> {
    let mut requested = HashMap::new();
    for (line, row) in read_csv(&a.request, "--request", &["index", "image"])? {
        let at = || format!("--request {}: line {line}", a.request.display());
        let index: usize = row["index"]
            .parse()
            .with_context(|| format!("{}: index `{}` is not a number", at(), row["index"]))?;
        let image = &row["image"];
        if pool.samples.get(index).map(|s| &s.name) != Some(image) {
            bail!(
                "{}: `{image}` is not image {index} of the `{}` split of {} (a request for \
                 another dataset?)",
                at(),
                a.split.name(),
                a.data.display()
            );
        }
        if requested.insert(image.clone(), index).is_some() {
            bail!("{}: `{image}` is requested twice", at());
        }
    }
    Ok(requested)
}

/// The returned labels: each for a requested image, once, with a known class.
fn read_returned(
    a: &MergeLabelsConfig,
    pool: &SplitData,
    requested: &HashMap<String, usize>,
    classes: &[String],
) -> Result<Vec<Addition>> {
    let mut seen = HashSet::new();
    let mut adds = Vec::new();
    for (line, row) in read_csv(&a.labels, "--labels", &["image", "label"])? {
        let at = || format!("--labels {}: line {line}", a.labels.display());
        let image = &row["image"];
        let Some(&index) = requested.get(image) else {
            bail!(
                "{}: `{image}` was not requested in {}",
                at(),
                a.request.display()
            );
        };
        if !seen.insert(image.clone()) {
            bail!("{}: `{image}` is labeled twice", at());
        }
        let label = &row["label"];
        let class = classes
            .iter()
            .position(|c| c == label)
            .or_else(|| label.parse::<usize>().ok().filter(|&i| i < classes.len()))
            .with_context(|| {
                let shown: Vec<&str> = classes.iter().take(10).map(String::as_str).collect();
                format!(
                    "{}: unknown class `{label}` (the dataset has {}: {}{})",
                    at(),
                    classes.len(),
                    shown.join(", "),
                    if classes.len() > 10 { ", …" } else { "" }
                )
            })?;
        adds.push((index, class));
    }
    if adds.is_empty() {
        bail!("--labels {}: no labels", a.labels.display());
    }
    if !a.partial && adds.len() < requested.len() {
        let first = requested
            .iter()
            .filter(|(image, _)| !seen.contains(*image))
            .min_by_key(|(_, &index)| index)
            .map_or("", |(image, _)| image.as_str());
        bail!(
            "--labels {}: {} of the {} requested images have no label (first: `{first}`); \
             return one for each, or pass --partial to merge those that have one",
            a.labels.display(),
            requested.len() - adds.len(),
            requested.len()
        );
    }
    // Dataset order of the pool, so the result does not depend on the labelers' row order.
    adds.sort();
    Ok(adds
        .into_iter()
        .map(|(index, label)| Addition {
            name: pool.samples[index].name.clone(),
            source: pool.samples[index].source.clone(),
            label,
        })
        .collect())
}

/// Mirrors `src` into `dst` with hard links (copies when asked, for symlinks, or when linking
/// fails, e.g. across filesystems). Returns the number of files.
fn mirror(src: &Path, dst: &Path, copy: bool, bar: &indicatif::ProgressBar) -> Result<u64> {
    fs::create_dir_all(dst).with_context(|| format!("{}: cannot create", dst.display()))?;
    let mut n = 0;
    let entries = fs::read_dir(src).with_context(|| format!("{}: cannot read", src.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot read", src.display()))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let kind = e.file_type()?;
        if kind.is_dir() {
            n += mirror(&from, &to, copy, bar)?;
            continue;
        }
        let linked = !copy && !kind.is_symlink() && fs::hard_link(&from, &to).is_ok();
        if !linked {
            fs::copy(&from, &to).with_context(|| format!("{}: cannot copy", from.display()))?;
        }
        n += 1;
        bar.inc(1);
    }
    Ok(n)
}

/// A file of the new root replaced by new contents: the link to the input's file is removed
/// first, so the input is never written through it.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let _ = fs::remove_file(path);
    atomic_io::write_atomic(path, bytes)?;
    Ok(())
}

fn add_competition(new: &Path, train: &SplitData, adds: &[Addition]) -> Result<Vec<String>> {
    // The split's labels as already read and checked by `datasets::open`.
    let mut labels: Vec<i64> = train
        .samples
        .iter()
        .map(|s| s.label.map_or(-1, |l| l as i64))
        .collect();
    let mut names = Vec::new();
    for (j, add) in adds.iter().enumerate() {
        let ImageSource::File(src) = &add.source else {
            bail!("{}: not a file", add.name);
        };
        let name = format!("{}/{}.png", train.split.name(), train.samples.len() + j);
        let bytes = fs::read(src).with_context(|| format!("{}: cannot read", src.display()))?;
        if image::guess_format(&bytes).ok() != Some(image::ImageFormat::Png) {
            bail!(
                "{}: the competition layout holds PNG images only",
                src.display()
            );
        }
        fs::write(new.join(&name), bytes).with_context(|| format!("{name}: cannot write"))?;
        labels.push(add.label as i64);
        names.push(name);
    }
    let labels_name = format!("{}_label_tensor.pt", train.split.name());
    replace(
        &new.join(labels_name),
        &crate::pt_labels::label_tensor_bytes(&labels),
    )?;
    Ok(names)
}

fn add_folder(new: &Path, train: &SplitData, adds: &[Addition]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for add in adds {
        let ImageSource::File(src) = &add.source else {
            bail!("{}: not a file", add.name);
        };
        let file = src
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!(
            "{}/{}/labeled-{file}",
            train.split.name(),
            train.classes[add.label]
        );
        let to = new.join(&name);
        if to.exists() {
            bail!(
                "{name} already exists in {} (merged before?)",
                train.root.display()
            );
        }
        fs::create_dir_all(to.parent().unwrap())?;
        fs::copy(src, &to).with_context(|| format!("{}: cannot copy", src.display()))?;
        names.push(name);
    }
    Ok(names)
}

fn add_stl10(root: &Path, new: &Path, train: &SplitData, adds: &[Addition]) -> Result<Vec<String>> {
    let (x, y) = ("train_X.bin", "train_y.bin");
    let mut xs = fs::read(root.join(x)).with_context(|| format!("{x}: cannot read"))?;
    let mut ys = fs::read(root.join(y)).with_context(|| format!("{y}: cannot read"))?;
    let mut names = Vec::new();
    for (j, add) in adds.iter().enumerate() {
        let ImageSource::Stl10 { file, index } = &add.source else {
            bail!("{}: not an STL-10 record", add.name);
        };
        let mut raw = vec![0u8; STL10_IMAGE_BYTES];
        fs::File::open(file)
            .and_then(|f| f.read_exact_at(&mut raw, (index * STL10_IMAGE_BYTES) as u64))
            .with_context(|| format!("{}: cannot read image {index}", file.display()))?;
        xs.extend_from_slice(&raw);
        ys.push(u8::try_from(add.label + 1).context("STL-10 labels are one byte")?);
        names.push(format!("{x}#{}", train.samples.len() + j));
    }
    replace(&new.join(x), &xs)?;
    replace(&new.join(y), &ys)?;
    Ok(names)
}

pub fn run(a: &MergeLabelsConfig) -> Result<Value> {
    let root = a
        .data
        .canonicalize()
        .with_context(|| format!("--data {}: not found", a.data.display()))?;
    if a.out.exists() {
        bail!(
            "--out {}: already exists (the new root must be a new folder)",
            a.out.display()
        );
    }
    let parent = atomic_io::parent_dir(&a.out);
    let parent = parent
        .canonicalize()
        .with_context(|| format!("--out {}: its folder does not exist", a.out.display()))?;
    if parent.starts_with(&root) {
        bail!(
            "--out {}: inside --data; the input root is never written to",
            a.out.display()
        );
    }
    let pool = crate::open(&root, a.split, a.format)?;
    let train = crate::open(&root, a.train_split, Some(pool.format))?;
    if !train.is_labeled() {
        bail!("--train-split {}: has no labels", a.train_split.name());
    }
    let requested = read_request(a, &pool)?;
    let adds = read_returned(a, &pool, &requested, &train.classes)?;

    let out_name = a.out.file_name().context("--out needs a folder name")?;
    let tmp = parent.join(format!(
        ".{}.tmp-merge-{}",
        out_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<(u64, Vec<String>)> {
        let bar = files_counter(a.progress);
        let n = mirror(&root, &tmp, a.copy, &bar)?;
        bar.finish_and_clear();
        let names = match pool.format {
            Format::Competition => add_competition(&tmp, &train, &adds)?,
            Format::Folder => add_folder(&tmp, &train, &adds)?,
            Format::Stl10 => add_stl10(&root, &tmp, &train, &adds)?,
        };
        // Provenance: which request image became which training image.
        let mut log = String::from("image,source,label\n");
        for (name, add) in names.iter().zip(&adds) {
            log.push_str(&format!(
                "{},{},{}\n",
                crate::csv::field(name),
                crate::csv::field(&add.name),
                crate::csv::field(&train.classes[add.label])
            ));
        }
        fs::write(tmp.join("merged_labels.csv"), log)?;
        // The new root must read back as the old one plus the additions.
        let check = crate::open(&tmp, a.train_split, Some(pool.format))?;
        let mut got: Vec<Option<usize>> = check.samples.iter().map(|s| s.label).collect();
        let mut want: Vec<Option<usize>> = train.samples.iter().map(|s| s.label).collect();
        want.extend(adds.iter().map(|x| Some(x.label)));
        if pool.format == Format::Folder {
            // Folder order is by class, then file name: compare the label counts.
            got.sort();
            want.sort();
        }
        if got != want {
            bail!(
                "internal: the merged `{}` split does not read back as the old one plus {} images",
                a.train_split.name(),
                adds.len()
            );
        }
        Ok((n, names))
    })();
    let (files, names) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &a.out)
        .with_context(|| format!("--out {}: cannot create", a.out.display()))?;
    let mut counts = vec![0usize; train.classes.len()];
    for x in &adds {
        counts[x.label] += 1;
    }
    eprintln!(
        "merge-labels: {} labeled images added to `{}` ({} → {}), {files} files carried over → {}",
        adds.len(),
        a.train_split.name(),
        train.samples.len(),
        train.samples.len() + adds.len(),
        a.out.display()
    );
    Ok(json!({
        "added": adds.len(),
        "train_before": train.samples.len(),
        "train_after": train.samples.len() + adds.len(),
        "first": names.first(),
        "last": names.last(),
        "class_counts": train.classes.iter().zip(&counts).map(|(c, n)| (c.clone(), json!(n)))
            .collect::<serde_json::Map<String, Value>>(),
        "out": a.out.display().to_string(),
    }))
}

/// A count of the files carried over, on stderr unless hidden.
fn files_counter(visible: bool) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {pos} {per_sec}").expect("static template"),
    );
    bar.set_message("carrying files over");
    bar
}
