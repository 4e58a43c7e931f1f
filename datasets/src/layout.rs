//! The three dataset layouts of SPEC "Data layouts", listed into samples in dataset order.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use crate::error::{DataError, Result};
use crate::pt_labels::read_label_tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Folder,
    Competition,
    Stl10,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "folder" => Ok(Format::Folder),
            "competition" => Ok(Format::Competition),
            "stl10" => Ok(Format::Stl10),
            _ => Err(format!(
                "unknown format `{s}` (folder, competition or stl10)"
            )),
        }
    }
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Folder => "folder",
            Format::Competition => "competition",
            Format::Stl10 => "stl10",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
    Unlabeled,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
            Split::Unlabeled => "unlabeled",
        }
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            "unlabeled" => Ok(Split::Unlabeled),
            _ => Err(format!(
                "unknown split `{s}` (train, val, test or unlabeled)"
            )),
        }
    }
}

/// Where one image's bytes live.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    File(PathBuf),
    /// Image `index` of an STL-10 `*_X.bin` file (3×96×96 uint8, column-major per channel).
    Stl10 {
        file: PathBuf,
        index: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub source: ImageSource,
    /// The `image` column of a predictions CSV: the path relative to the root, or `file#index`.
    pub name: String,
    pub label: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct SplitData {
    pub root: PathBuf,
    pub format: Format,
    pub split: Split,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

impl SplitData {
    pub fn is_labeled(&self) -> bool {
        self.samples.first().is_some_and(|s| s.label.is_some())
    }
}

pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect::<Result<_>>()?;
    out.sort();
    Ok(out)
}

/// stl10 when its binaries are there, competition when its label tensors or `train/0.png` are,
/// folder otherwise.
pub fn detect_format(root: &Path) -> Result<Format> {
    if !root.is_dir() {
        return Err(DataError::Usage(format!(
            "--data {}: not a directory",
            root.display()
        )));
    }
    let has = |p: &str| root.join(p).exists();
    if ["train_X.bin", "test_X.bin", "unlabeled_X.bin"]
        .iter()
        .any(|p| has(p))
    {
        Ok(Format::Stl10)
    } else if has("train_label_tensor.pt") || has("val_label_tensor.pt") || has("train/0.png") {
        Ok(Format::Competition)
    } else {
        Ok(Format::Folder)
    }
}

/// `classes.txt`: `index<TAB>name[<TAB>...]` per line; indices must be 0..n-1.
pub fn read_classes_txt(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut entries = Vec::new();
    for (lineno, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut f = line.split('\t');
        let (idx, name) = (f.next(), f.next());
        let idx: usize = idx.and_then(|i| i.trim().parse().ok()).ok_or_else(|| {
            DataError::file(
                path,
                format!("line {}: expected `index<TAB>name`", lineno + 1),
            )
        })?;
        let name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                DataError::file(
                    path,
                    format!("line {}: expected `index<TAB>name`", lineno + 1),
                )
            })?;
        entries.push((idx, name.to_string()));
    }
    entries.sort();
    if entries.iter().enumerate().any(|(i, (idx, _))| *idx != i) {
        return Err(DataError::file(
            path,
            "class indices must be 0..n-1, each once",
        ));
    }
    Ok(entries.into_iter().map(|(_, n)| n).collect())
}

fn open_folder(root: &Path, split: Split) -> Result<SplitData> {
    let dir = root.join(split.name());
    if !dir.is_dir() {
        return Err(DataError::file(
            &dir,
            format!("no `{}` split here", split.name()),
        ));
    }
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    if split == Split::Unlabeled {
        let samples: Vec<Sample> = read_dir_sorted(&dir)?
            .into_iter()
            .filter(|p| is_image(p))
            .map(|p| Sample {
                name: rel(&p),
                source: ImageSource::File(p),
                label: None,
            })
            .collect();
        return finish(root, Format::Folder, split, vec![], samples, &dir);
    }
    let folders: Vec<PathBuf> = read_dir_sorted(&dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    let classes_txt = root.join("classes.txt");
    let classes = if classes_txt.exists() {
        read_classes_txt(&classes_txt)?
    } else {
        folders
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    };
    let mut labeled = Vec::with_capacity(folders.len());
    for folder in &folders {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            DataError::file(
                folder,
                format!("class folder `{name}` is not in {}", classes_txt.display()),
            )
        })?;
        labeled.push((label, folder));
    }
    // Dataset order: by class index, then by file name (torchvision's ImageFolder order).
    labeled.sort();
    let mut samples = Vec::new();
    for (label, folder) in labeled {
        for p in read_dir_sorted(folder)?.into_iter().filter(|p| is_image(p)) {
            samples.push(Sample {
                name: rel(&p),
                source: ImageSource::File(p),
                label: Some(label),
            });
        }
    }
    finish(root, Format::Folder, split, classes, samples, &dir)
}

fn open_competition(root: &Path, split: Split) -> Result<SplitData> {
    let split = if split == Split::Test {
        Split::Val
    } else {
        split
    };
    let dir = root.join(split.name());
    if !dir.is_dir() {
        return Err(DataError::file(
            &dir,
            format!("no `{}` split here", split.name()),
        ));
    }
    let mut numbered: Vec<(usize, PathBuf)> = Vec::new();
    for p in read_dir_sorted(&dir)?.into_iter().filter(|p| is_image(p)) {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let i: usize = stem
            .parse()
            .map_err(|_| DataError::file(&p, "competition images must be named <number>.png"))?;
        numbered.push((i, p));
    }
    numbered.sort();
    if let Some((pos, (i, p))) = numbered.iter().enumerate().find(|(pos, (i, _))| pos != i) {
        let missing = if *i > pos {
            format!("{pos}.png is missing")
        } else {
            "a number repeats".into()
        };
        return Err(DataError::file(
            p,
            format!("images must be numbered 0..n-1: {missing}"),
        ));
    }
    let labels = if split == Split::Unlabeled {
        None
    } else {
        let path = root.join(format!("{}_label_tensor.pt", split.name()));
        let labels = read_label_tensor(&path)?;
        if labels.len() != numbered.len() {
            return Err(DataError::file(
                &path,
                format!(
                    "{} labels for {} images in {}",
                    labels.len(),
                    numbered.len(),
                    dir.display()
                ),
            ));
        }
        if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l < 0) {
            return Err(DataError::file(
                &path,
                format!("label {l} of image {i} is negative"),
            ));
        }
        Some(labels)
    };
    let classes_txt = root.join("classes.txt");
    let classes = if classes_txt.exists() {
        read_classes_txt(&classes_txt)?
    } else {
        // The competition ships no names: classes are their indices, as many as the largest seen
        // in either labeled split.
        let mut max = labels.iter().flatten().copied().max().unwrap_or(-1);
        for other in ["train", "val"] {
            let p = root.join(format!("{other}_label_tensor.pt"));
            if other != split.name() && p.exists() {
                max = max.max(read_label_tensor(&p)?.into_iter().max().unwrap_or(-1));
            }
        }
        (0..=max).map(|i| i.to_string()).collect()
    };
    if let Some(labels) = &labels {
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes.len())
        {
            return Err(DataError::file(
                &root.join(format!("{}_label_tensor.pt", split.name())),
                format!(
                    "label {l} of image {i} is out of range for {} classes",
                    classes.len()
                ),
            ));
        }
    }
    let samples = numbered
        .into_iter()
        .map(|(i, p)| Sample {
            name: format!("{}/{i}.png", split.name()),
            source: ImageSource::File(p),
            label: labels.as_ref().map(|l| l[i] as usize),
        })
        .collect();
    finish(root, Format::Competition, split, classes, samples, &dir)
}

pub const STL10_IMAGE_BYTES: usize = 3 * 96 * 96;

fn open_stl10(root: &Path, split: Split) -> Result<SplitData> {
    let stem = match split {
        Split::Train => "train",
        Split::Val | Split::Test => "test",
        Split::Unlabeled => "unlabeled",
    };
    let x = root.join(format!("{stem}_X.bin"));
    let len = fs::metadata(&x).map_err(|e| DataError::io(&x, e))?.len() as usize;
    if !len.is_multiple_of(STL10_IMAGE_BYTES) {
        return Err(DataError::file(
            &x,
            format!("size {len} is not a multiple of {STL10_IMAGE_BYTES} (3×96×96)"),
        ));
    }
    let n = len / STL10_IMAGE_BYTES;
    let names_path = root.join("class_names.txt");
    let classes: Vec<String> = if names_path.exists() {
        fs::read_to_string(&names_path)
            .map_err(|e| DataError::io(&names_path, e))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    } else {
        (1..=10).map(|i| i.to_string()).collect()
    };
    let labels = if split == Split::Unlabeled {
        None
    } else {
        let y = root.join(format!("{stem}_y.bin"));
        let raw = fs::read(&y).map_err(|e| DataError::io(&y, e))?;
        if raw.len() != n {
            return Err(DataError::file(
                &y,
                format!("{} labels for {n} images in {}", raw.len(), x.display()),
            ));
        }
        if let Some((i, l)) = raw
            .iter()
            .enumerate()
            .find(|(_, &l)| l == 0 || l as usize > classes.len())
        {
            return Err(DataError::file(
                &y,
                format!("label {l} of image {i} is outside 1..{}", classes.len()),
            ));
        }
        Some(raw)
    };
    let fname = x
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let samples = (0..n)
        .map(|index| Sample {
            name: format!("{fname}#{index}"),
            source: ImageSource::Stl10 {
                file: x.clone(),
                index,
            },
            label: labels.as_ref().map(|l| l[index] as usize - 1),
        })
        .collect();
    finish(root, Format::Stl10, split, classes, samples, &x)
}

fn finish(
    root: &Path,
    format: Format,
    split: Split,
    classes: Vec<String>,
    samples: Vec<Sample>,
    at: &Path,
) -> Result<SplitData> {
    if samples.is_empty() {
        return Err(DataError::file(
            at,
            format!("the `{}` split holds no images", split.name()),
        ));
    }
    Ok(SplitData {
        root: root.to_path_buf(),
        format,
        split,
        classes,
        samples,
    })
}

/// Lists one split of the dataset at `root` (`format` None = detected).
pub fn open(root: &Path, split: Split, format: Option<Format>) -> Result<SplitData> {
    let format = match format {
        Some(f) => f,
        None => detect_format(root)?,
    };
    match format {
        Format::Folder => open_folder(root, split),
        Format::Competition => open_competition(root, split),
        Format::Stl10 => open_stl10(root, split),
    }
}
