//! The decoded store: every image of a split decoded once (rayon) into one memory-mapped uint8
//! file, reused across epochs and runs. The OS page cache holds it, so 512,000 images (14 GB)
//! are never held twice in RAM and a second run starts at once.
//!
//! File: a 64-byte header (magic, stored size, count, SHA-256 of the source listing) then `n`
//! images of `size×size×3` bytes (HWC, RGB). The listing covers each file's path, length and
//! mtime, so a changed, added or removed image invalidates the store. Written to a temp file,
//! then renamed: an interrupted build leaves no store behind.
//!
//! Processes that need the same store take turns on a lock file beside it: one builds, the
//! others wait and then map what it built. The file's length and header are read before it is
//! mapped (a mapping of a truncated file is a SIGBUS at the first touch past its end), its
//! identity is checked against the stamp its builder wrote (a store rewritten in place or
//! replaced under the same name is rebuilt), and the space is reserved before the build starts
//! (a full disk is an error naming the store, not a SIGBUS in the middle of it).

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use datasets::layout::SplitData;
use memmap2::{Advice, Mmap, UncheckedAdvice};
use sha2::{Digest, Sha256};
use tch::Tensor;

use super::build::build;
use super::format::{fingerprint, header, HEADER};
use super::guard::{map_if_valid, wait_for, Access};

/// A split decoded to `size×size` RGB: shorter side resized to `size` (Pillow bilinear), then
/// center-cropped — exactly the eval transform for `resize = crop = size`, and a no-op for the
/// 96×96 images of the competition and STL-10.
pub struct DecodedSplit {
    pub size: u32,
    pub n: usize,
    pub labels: Vec<Option<usize>>,
    pub names: Vec<String>,
    pub classes: Vec<String>,
    pub path: PathBuf,
    map: Mmap,
}

/// Where stores live: `$MOCO_CACHE_DIR`, else `$XDG_CACHE_HOME/moco-rs`, else `~/.cache/moco-rs`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MOCO_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("moco-rs");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("moco-rs")
}

impl DecodedSplit {
    /// Opens the store for `split` under `cache_dir`, building it first when it is missing or
    /// its sources changed.
    pub fn open(split: &SplitData, size: u32, cache_dir: &Path, progress: bool) -> Result<Self> {
        if split.samples.is_empty() {
            bail!(
                "{}: split `{}` has no images",
                split.root.display(),
                split.split.name()
            );
        }
        let fp = fingerprint(split, size)?;
        let root = fs::canonicalize(&split.root).unwrap_or(split.root.clone());
        let key = Sha256::digest(format!("{}|{}|{size}", root.display(), split.split.name()));
        let hex: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
        fs::create_dir_all(cache_dir)
            .with_context(|| format!("--cache-dir {}: cannot create", cache_dir.display()))?;
        let path = cache_dir.join(format!("{}-{hex}.u8", split.split.name()));
        let want = header(size, split.samples.len(), &fp);
        let len = (HEADER + split.samples.len() * (size * size * 3) as usize) as u64;
        let lock_path = path.with_extension("lock");
        let valid = {
            // Readers share the lock; a builder holds it alone, so a reader never sees half a store.
            let _reading = wait_for(&lock_path, &path, Access::Read)?;
            map_if_valid(&path, &want, len)?
        };
        let map = match valid {
            Some(map) => map,
            None => {
                let _building = wait_for(&lock_path, &path, Access::Build)?;
                match map_if_valid(&path, &want, len)? {
                    Some(map) => map,
                    None => {
                        build(split, size, &path, &want, progress)?;
                        map_if_valid(&path, &want, len)?.with_context(|| {
                            format!(
                                "{}: the decoded store just built does not check",
                                path.display()
                            )
                        })?
                    }
                }
            }
        };
        Ok(DecodedSplit {
            size,
            n: split.samples.len(),
            labels: split.samples.iter().map(|s| s.label).collect(),
            names: split.samples.iter().map(|s| s.name.clone()).collect(),
            classes: split.classes.clone(),
            path,
            map,
        })
    }

    fn image_bytes(&self) -> usize {
        (self.size * self.size * 3) as usize
    }

    /// Image `i`, HWC RGB.
    pub fn image(&self, i: usize) -> &[u8] {
        let b = self.image_bytes();
        &self.map[HEADER + i * b..HEADER + (i + 1) * b]
    }

    /// Images `idx` as a uint8 `[N,3,size,size]` tensor on the host.
    pub fn batch(&self, idx: &[usize]) -> Tensor {
        nchw_batch(idx.iter().map(|&i| self.image(i)), idx.len(), self.size)
    }

    /// Every image in order, `batch` at a time, as `(range, uint8 [n,3,size,size])`; see
    /// [`DecodedSplit::batch_in_order`].
    pub fn batches_in_order(
        &self,
        batch: usize,
    ) -> impl Iterator<Item = (Range<usize>, Tensor)> + '_ {
        let batch = batch.max(1);
        (0..self.n).step_by(batch).map(move |start| {
            let range = start..(start + batch).min(self.n);
            (range.clone(), self.batch_in_order(range))
        })
    }

    /// Images `range` in order, after which this process lets go of their pages (the page
    /// cache keeps them): a pass in order over a 14 GB store holds one batch of it, not the
    /// whole store, in its resident set.
    fn batch_in_order(&self, range: Range<usize>) -> Tensor {
        let idx: Vec<usize> = range.clone().collect();
        let batch = self.batch(&idx);
        let b = self.image_bytes();
        // SAFETY: the map is a read-only shared mapping of a file that is never written in
        // place: dropping its pages loses nothing, the next read faults them back from the file.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                HEADER + range.start * b,
                range.len() * b,
            )
        };
        batch
    }

    /// Lets go of every page of the store this process has mapped (the page cache keeps them).
    /// For after a scattered read: each fault maps a whole large folio around the image it
    /// reads, so a few thousand images picked at random map most of a store.
    pub fn release_pages(&self) {
        // SAFETY: as in `batch_in_order`: a read-only shared mapping of a file never written in
        // place; the next read faults the pages back from the file.
        let _ = unsafe { self.map.unchecked_advise(UncheckedAdvice::DontNeed) };
    }

    /// Tells the kernel that reads will jump around the store (pretraining's shuffled order):
    /// its readahead (8 MB per fault on some disks) would otherwise read megabytes around each
    /// 27 KB image. A hint: failure changes only speed.
    pub fn expect_random_reads(&self) {
        let _ = self.map.advise(Advice::Random);
    }

    pub fn is_labeled(&self) -> bool {
        self.labels.iter().all(Option::is_some)
    }
}

/// HWC images → one uint8 `[N,3,size,size]` tensor.
pub(super) fn nchw_batch<'a>(
    images: impl Iterator<Item = &'a [u8]>,
    n: usize,
    size: u32,
) -> Tensor {
    let s = size as i64;
    let mut buf = Vec::with_capacity(n * (s * s * 3) as usize);
    for img in images {
        buf.extend_from_slice(img);
    }
    Tensor::from_slice(&buf)
        .view([n as i64, s, s, 3])
        .permute([0, 3, 1, 2])
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::layout::{ImageSource, Split};
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    fn small_dataset(dir: &Path) -> PathBuf {
        let root = dir.join("data");
        let cfg = datasets::synth::SynthConfig {
            classes: 2,
            train_per_class: 3,
            val_per_class: 1,
            unlabeled: 2,
            seed: 4,
            ..Default::default()
        };
        datasets::synth::write_dataset(&root, &cfg, false).unwrap();
        root
    }

    #[test]
    fn store_matches_the_decoder_and_is_rebuilt_when_a_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = small_dataset(tmp.path());
        let cache = tmp.path().join("cache");
        let split = datasets::layout::open(&root, Split::Train, None).unwrap();
        let store = DecodedSplit::open(&split, 96, &cache, false).unwrap();
        assert_eq!(store.n, 6);
        for (i, s) in split.samples.iter().enumerate() {
            let img = datasets::decode::load(&s.source).unwrap();
            assert_eq!(store.image(i), img.as_raw().as_slice(), "image {i}");
        }
        let built = fs::metadata(&store.path).unwrap().modified().unwrap();
        drop(store);
        // Reopened unchanged: the same file, not rebuilt.
        let again = DecodedSplit::open(&split, 96, &cache, false).unwrap();
        assert_eq!(
            fs::metadata(&again.path).unwrap().modified().unwrap(),
            built
        );
        drop(again);
        // One image replaced by another one: the listing's fingerprint changes, the store follows.
        let ImageSource::File(first) = &split.samples[0].source else {
            unreachable!()
        };
        let ImageSource::File(last) = &split.samples[5].source else {
            unreachable!()
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::copy(last, first).unwrap();
        let changed = DecodedSplit::open(&split, 96, &cache, false).unwrap();
        assert_eq!(changed.image(0), changed.image(5));
    }

    #[test]
    fn a_store_rewritten_in_place_with_its_header_is_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let root = small_dataset(tmp.path());
        let cache = tmp.path().join("cache");
        let split = datasets::layout::open(&root, Split::Train, None).unwrap();
        let store = DecodedSplit::open(&split, 96, &cache, false).unwrap();
        let (path, first) = (store.path.clone(), store.image(0).to_vec());
        drop(store);
        // Same length, same header, other pixels: only the stamp tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&vec![7u8; first.len()], HEADER as u64)
            .unwrap();
        drop(f);
        let again = DecodedSplit::open(&split, 96, &cache, false).unwrap();
        assert_eq!(again.image(0), first.as_slice());
        drop(again);
        // Replaced by a copy of itself (another inode): rebuilt too, and the same pixels.
        let copy = tmp.path().join("copy.u8");
        fs::copy(&path, &copy).unwrap();
        fs::rename(&copy, &path).unwrap();
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let third = DecodedSplit::open(&split, 96, &cache, false).unwrap();
        assert_ne!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        assert_eq!(third.image(0), first.as_slice());
    }

    #[test]
    fn a_corrupt_image_names_its_file_and_leaves_no_store() {
        let tmp = tempfile::tempdir().unwrap();
        let root = small_dataset(tmp.path());
        let cache = tmp.path().join("cache");
        let split = datasets::layout::open(&root, Split::Train, None).unwrap();
        let ImageSource::File(bad) = &split.samples[2].source else {
            unreachable!()
        };
        let bytes = fs::read(bad).unwrap();
        fs::write(bad, &bytes[..bytes.len() / 2]).unwrap();
        let split = datasets::layout::open(&root, Split::Train, None).unwrap();
        let err = DecodedSplit::open(&split, 96, &cache, false).err().unwrap();
        assert!(
            format!("{err:#}").contains(&bad.display().to_string()),
            "{err:#}"
        );
        // Only the lock file beside the store may remain.
        let left: Vec<_> = fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "a partial store was left: {left:?}");
    }
}
