//! The study's datasets. From one labeled split (folder layout) a start root is built: a few
//! labeled images per class in `train/`, the rest in `unlabeled/` under neutral names, `val/`
//! as it was. Only the oracle keeps the pool's labels, and it answers a request the way a
//! labeler would: a CSV of `image,label` for the requested images.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use datasets::layout::{Format, ImageSource, Sample, Split, SplitData};

use crate::runtime::rng::{permutation, stream, Purpose};

/// A start root and the pool's hidden labels.
pub struct StartRoot {
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// The true class of each pool image, by its name in the pool split.
    pub oracle: HashMap<String, usize>,
    /// Pool images in the pool split's order (its indices).
    pub pool: Vec<String>,
}

/// A hard link, or a copy where linking fails (another filesystem, a file owned by another
/// user under protected hard links).
fn place(src: &Path, dst: &Path) -> Result<()> {
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst).with_context(|| format!("{}: cannot copy", src.display()))?;
    }
    Ok(())
}

fn file_of(s: &Sample) -> Result<&Path> {
    match &s.source {
        ImageSource::File(p) => Ok(p),
        ImageSource::Stl10 { .. } => bail!("{}: not an image file", s.name),
    }
}

fn extension(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into())
}

/// The labeled split, checked: folder layout, labels, and more than `per_class` images in
/// every class (the rest is the pool).
pub fn open_labeled(data: &Path, split: Split, per_class: usize) -> Result<SplitData> {
    let d = datasets::open(data, split, None)?;
    if d.format != Format::Folder {
        bail!(
            "--data {}: the study builds its datasets from the folder layout (this is {})",
            data.display(),
            d.format.name()
        );
    }
    if !d.is_labeled() {
        bail!(
            "--data {}: the `{}` split has no labels",
            data.display(),
            split.name()
        );
    }
    let mut counts = vec![0usize; d.classes.len()];
    for s in &d.samples {
        counts[s.label.unwrap_or(0)] += 1;
    }
    if let Some(c) = counts.iter().position(|&n| n <= per_class) {
        bail!(
            "--starts {per_class}: class `{}` has {} `{}` images, which leaves no pool",
            d.classes[c],
            counts[c],
            split.name()
        );
    }
    Ok(d)
}

/// `per_class` images of each class drawn by `seed`: (start, pool) as sample indices, the
/// pool in a random order so that its indices say nothing about its classes.
fn draw(train: &SplitData, per_class: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class = vec![Vec::new(); train.classes.len()];
    for (i, s) in train.samples.iter().enumerate() {
        by_class[s.label.unwrap_or(0)].push(i);
    }
    let (mut start, mut pool) = (Vec::new(), Vec::new());
    for (c, members) in by_class.iter().enumerate() {
        let order = permutation(
            &mut stream(seed, Purpose::LabelStudy, c as u64),
            members.len(),
        );
        for (rank, &j) in order.iter().enumerate() {
            let i = members[j as usize];
            if rank < per_class {
                start.push(i);
            } else {
                pool.push(i);
            }
        }
    }
    let mix = permutation(&mut stream(seed, Purpose::LabelStudy, u64::MAX), pool.len());
    let pool = mix.iter().map(|&j| pool[j as usize]).collect();
    (start, pool)
}

/// Builds `root` (in a temp folder renamed at the end) from `train` and the val split of
/// `data`.
pub fn build(
    data: &Path,
    train: &SplitData,
    per_class: usize,
    seed: u64,
    root: &Path,
) -> Result<StartRoot> {
    let tmp = root.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let (start, pool) = draw(train, per_class, seed);
    for &i in &start {
        let s = &train.samples[i];
        place(file_of(s)?, &tmp.join(&s.name))?;
    }
    let mut oracle = HashMap::new();
    let mut names = Vec::new();
    for (k, &i) in pool.iter().enumerate() {
        let s = &train.samples[i];
        let src = file_of(s)?;
        let name = format!("{}/pool-{k:06}.{}", Split::Unlabeled.name(), extension(src));
        place(src, &tmp.join(&name))?;
        oracle.insert(name.clone(), s.label.unwrap_or(0));
        names.push(name);
    }
    let val = datasets::open(data, Split::Val, Some(Format::Folder))?;
    for s in &val.samples {
        place(file_of(s)?, &tmp.join(&s.name))?;
    }
    let classes_txt = data.join("classes.txt");
    if classes_txt.exists() {
        place(&classes_txt, &tmp.join("classes.txt"))?;
    }
    let _ = fs::remove_dir_all(root);
    fs::rename(&tmp, root).with_context(|| format!("{}: cannot create", root.display()))?;
    let pool_split = datasets::open(root, Split::Unlabeled, Some(Format::Folder))?;
    let pool_names: Vec<String> = pool_split.samples.into_iter().map(|s| s.name).collect();
    Ok(StartRoot {
        root: root.to_path_buf(),
        classes: train.classes.clone(),
        oracle,
        pool: pool_names,
    })
}

/// The first `budget` rows of a ranked request CSV (its header kept) in `out`.
pub fn truncate_request(request: &Path, budget: usize, out: &Path) -> Result<()> {
    let text = fs::read_to_string(request)
        .with_context(|| format!("{}: cannot read", request.display()))?;
    let kept: Vec<&str> = text.lines().take(budget + 1).collect();
    atomic_io::write_atomic(out, format!("{}\n", kept.join("\n")).as_bytes())?;
    Ok(())
}

/// The requested images of a request CSV, in its order.
pub fn requested(request: &Path) -> Result<Vec<String>> {
    let mut r = csv::Reader::from_path(request)
        .with_context(|| format!("{}: cannot read", request.display()))?;
    let image = r
        .headers()?
        .iter()
        .position(|h| h == "image")
        .with_context(|| format!("{}: no `image` column", request.display()))?;
    r.records()
        .map(|row| Ok(row?.get(image).unwrap_or_default().to_string()))
        .collect()
}

impl StartRoot {
    /// The oracle's answers to `images` as `image,label` (class names) in `out`; returns the
    /// request's true count per class.
    pub fn answer(&self, images: &[String], out: &Path) -> Result<Vec<usize>> {
        let mut counts = vec![0usize; self.classes.len()];
        let mut text = String::from("image,label\n");
        for name in images {
            let Some(&c) = self.oracle.get(name) else {
                bail!("{name}: not an image of the pool");
            };
            counts[c] += 1;
            text.push_str(&format!(
                "{},{}\n",
                datasets::csv::field(name),
                datasets::csv::field(&self.classes[c])
            ));
        }
        atomic_io::write_atomic(out, text.as_bytes())?;
        Ok(counts)
    }

    /// A request CSV (label-request's columns; no scores or predictions) of the pool images
    /// `picks`, in rank order.
    pub fn write_request(&self, picks: &[usize], out: &Path) -> Result<()> {
        let mut text = format!("{}\n", crate::labels::request::HEADER);
        for (rank, &i) in picks.iter().enumerate() {
            let name = datasets::csv::field(&self.pool[i]);
            text.push_str(&format!("{},{i},{name},0,,0\n", rank + 1));
        }
        atomic_io::write_atomic(out, text.as_bytes())?;
        Ok(())
    }

    /// The pool in a random order drawn by `seed`; `balanced`: rank r of every class (by the
    /// true labels) before rank r + 1 of any, the classes' images each in a random order.
    pub fn random_order(&self, seed: u64, balanced: bool) -> Vec<usize> {
        let order = permutation(
            &mut stream(seed, Purpose::LabelStudy, u64::MAX - 1),
            self.pool.len(),
        );
        let order: Vec<usize> = order.into_iter().map(|i| i as usize).collect();
        if !balanced {
            return order;
        }
        let mut by_class = vec![Vec::new(); self.classes.len()];
        for &i in &order {
            by_class[self.oracle[&self.pool[i]]].push(i);
        }
        let longest = by_class.iter().map(Vec::len).max().unwrap_or(0);
        (0..longest)
            .flat_map(|r| by_class.iter().filter_map(move |m| m.get(r).copied()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(per_class: &[usize]) -> SplitData {
        let mut samples = Vec::new();
        for (c, &n) in per_class.iter().enumerate() {
            for i in 0..n {
                let name = format!("train/c{c}/{i}.png");
                samples.push(Sample {
                    source: ImageSource::File(PathBuf::from(&name)),
                    name,
                    label: Some(c),
                });
            }
        }
        SplitData {
            root: PathBuf::new(),
            format: Format::Folder,
            split: Split::Train,
            classes: (0..per_class.len()).map(|c| format!("c{c}")).collect(),
            samples,
        }
    }

    #[test]
    fn the_start_holds_k_of_every_class_and_the_pool_the_rest_once() {
        let train = split(&[10, 7, 12]);
        let (start, pool) = draw(&train, 3, 4);
        let class = |i: &usize| train.samples[*i].label.unwrap();
        for c in 0..3 {
            assert_eq!(start.iter().filter(|i| class(i) == c).count(), 3);
        }
        let mut all: Vec<usize> = start.iter().chain(&pool).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..29).collect::<Vec<_>>());
        assert_ne!(
            draw(&train, 3, 5).0,
            start,
            "another seed draws another start"
        );
        let classes: Vec<usize> = pool.iter().map(class).collect();
        assert!(
            classes.windows(2).any(|w| w[0] > w[1]),
            "the pool is not in class order"
        );
    }

    #[test]
    fn a_balanced_random_order_takes_rank_r_of_every_class_first() {
        let labels = [0, 0, 0, 0, 1, 1, 2, 2, 2];
        let root = StartRoot {
            root: PathBuf::new(),
            classes: vec!["a".into(), "b".into(), "c".into()],
            pool: (0..labels.len()).map(|i| format!("p{i}")).collect(),
            oracle: labels
                .iter()
                .enumerate()
                .map(|(i, &c)| (format!("p{i}"), c))
                .collect(),
        };
        let order = root.random_order(1, true);
        let seen: Vec<usize> = order.iter().map(|&i| labels[i]).collect();
        assert_eq!(&seen[..6], &[0, 1, 2, 0, 1, 2]);
        assert_eq!(&seen[6..], &[0, 2, 0]);
        let mut plain = root.random_order(1, false);
        plain.sort_unstable();
        assert_eq!(plain, (0..9).collect::<Vec<_>>());
    }
}
