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

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use datasets::layout::{ImageSource, SplitData};
use datasets::transform::eval_crop;
use memmap2::{Advice, Mmap, UncheckedAdvice};
use models::Preprocess;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tch::Tensor;

const MAGIC: &[u8; 8] = b"MOCODEC1";
const HEADER: usize = 64;

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

fn fingerprint(split: &SplitData, size: u32) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(format!(
        "{:?}|{:?}|{size}|{}\n",
        split.format,
        split.split,
        split.samples.len()
    ));
    let mut stats: HashMap<PathBuf, (u64, i128)> = HashMap::new();
    let mut stat = |p: &Path| -> Result<(u64, i128)> {
        if let Some(s) = stats.get(p) {
            return Ok(*s);
        }
        let m = fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(*stats.entry(p.to_path_buf()).or_insert((m.len(), mtime)))
    };
    for s in &split.samples {
        let (p, index) = match &s.source {
            ImageSource::File(p) => (p.as_path(), 0),
            ImageSource::Stl10 { file, index } => (file.as_path(), *index),
        };
        let (len, mtime) = stat(p)?;
        h.update(format!("{}|{index}|{len}|{mtime}\n", p.display()));
    }
    Ok(h.finalize().into())
}

fn header(size: u32, n: usize, fp: &[u8; 32]) -> [u8; HEADER] {
    let mut b = [0u8; HEADER];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&size.to_le_bytes());
    b[16..24].copy_from_slice(&(n as u64).to_le_bytes());
    b[24..56].copy_from_slice(fp);
    b
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

#[derive(Clone, Copy, PartialEq)]
enum Access {
    Read,
    Build,
}

/// The store's lock file taken for `access`, saying so when another process makes this one wait.
fn wait_for(lock_path: &Path, store: &Path, access: Access) -> Result<atomic_io::lock::FileLock> {
    use atomic_io::lock;
    let ctx = || format!("{}: cannot lock the decoded store", lock_path.display());
    let now = match access {
        Access::Read => lock::try_lock_shared(lock_path),
        Access::Build => lock::try_lock(lock_path),
    };
    if let Some(l) = now.with_context(ctx)? {
        return Ok(l);
    }
    match access {
        Access::Read => eprintln!(
            "waiting for another process (pid {}) building {}",
            lock::holder(lock_path).map_or("?".into(), |p| p.to_string()),
            store.display()
        ),
        Access::Build => eprintln!("waiting for another process using {}", store.display()),
    }
    match access {
        Access::Read => lock::lock_shared(lock_path),
        Access::Build => lock::lock(lock_path),
    }
    .with_context(ctx)
}

/// The identity of a store file as its builder left it: device, inode, length and modification
/// time, kept in `<store>.stamp`. A store replaced under the same name (another inode) or
/// rewritten in place (another mtime) no longer matches, even with the same length and header.
fn stamp(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{} {} {} {}.{:09}\n",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

fn stamp_path(store: &Path) -> PathBuf {
    store.with_extension("stamp")
}

/// The store mapped when the file at `path` has the wanted length and header and is the file
/// its builder stamped, read from the open file before it is mapped (a mapping of a truncated
/// file is a SIGBUS at the first touch past its end); `None` when it is missing, another store,
/// or changed since it was built.
fn map_if_valid(path: &Path, want: &[u8; HEADER], len: u64) -> Result<Option<Mmap>> {
    let Ok(mut f) = File::open(path) else {
        return Ok(None);
    };
    let Ok(meta) = f.metadata() else {
        return Ok(None);
    };
    let mut head = [0u8; HEADER];
    let whole = meta.len() == len
        && std::io::Read::read_exact(&mut f, &mut head).is_ok()
        && head == *want
        && fs::read_to_string(stamp_path(path)).is_ok_and(|s| s == stamp(&meta));
    if !whole {
        return Ok(None);
    }
    // SAFETY: the file has the checked length; stores are replaced by rename, never rewritten
    // in place, so the mapped inode keeps its length while it is mapped.
    let map = unsafe { Mmap::map(&f) }
        .with_context(|| format!("{}: cannot map the decoded store", path.display()))?;
    Ok(Some(map))
}

/// Temp files of builds killed half-way (only the holder of the store's lock builds, so any
/// other temp file of this store is one).
fn remove_killed_builds(path: &Path) {
    let Some(stem) = path
        .file_stem()
        .map(|s| format!("{}.tmp-", s.to_string_lossy()))
    else {
        return;
    };
    let Ok(entries) = fs::read_dir(atomic_io::parent_dir(path)) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&stem) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Fails before the build when the cache folder's filesystem cannot take `len` more bytes.
fn check_space(path: &Path, len: u64) -> Result<()> {
    let dir = atomic_io::parent_dir(path);
    if let Ok(free) = atomic_io::space::available(&dir) {
        if free < len {
            bail!(
                "{}: the decoded store needs {} and {} has {} free; free space or point \
                 --cache-dir (MOCO_CACHE_DIR) at a larger disk",
                path.display(),
                atomic_io::space::human(len),
                dir.display(),
                atomic_io::space::human(free)
            );
        }
    }
    Ok(())
}

/// Images decoded in parallel before one positioned write: 1,024 × 27 KB at 96 px. The store is
/// written with `pwrite`, not through a writable map, so the build holds one chunk of memory
/// (a map would count every written page, 14 GB for 512,000 images, in the resident set) and a
/// failed write is an error naming the store rather than a SIGBUS.
const BUILD_CHUNK: usize = 1024;

/// Files read (and decoded) at once while a store is built. Small image files on a cold page
/// cache make the build wait on the disk, one read per thread: measured on this project's
/// 2-core machine, 2 readers fetched 206 PNGs/s and 16 fetched 2,400/s, while decoding alone
/// runs at ≈ 12,000/s. More threads than cores cost nothing when the files are cached.
const READERS: usize = 16;

/// Decodes `samples` into consecutive `img_bytes` slots of `buf`; the first failure is returned.
fn decode_into(
    samples: &[datasets::Sample],
    pre: &Preprocess,
    buf: &mut [u8],
    img_bytes: usize,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    buf.par_chunks_mut(img_bytes)
        .zip(samples.par_iter())
        .try_for_each(|(slot, sample)| -> Result<()> {
            let img = datasets::decode::load(&sample.source)?;
            slot.copy_from_slice(eval_crop(img, pre).as_raw());
            bar.inc(1);
            Ok(())
        })
}

fn build(split: &SplitData, size: u32, path: &Path, header: &[u8], progress: bool) -> Result<()> {
    let n = split.samples.len();
    let img_bytes = (size * size * 3) as usize;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let total = (HEADER + n * img_bytes) as u64;
    remove_killed_builds(path);
    check_space(path, total)?;
    let result = (|| -> Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("{}: cannot create the decoded store", tmp.display()))?;
        atomic_io::space::reserve(&f, total).with_context(|| {
            format!(
                "{}: cannot reserve {} for the decoded store",
                tmp.display(),
                atomic_io::space::human(total)
            )
        })?;
        let bar = crate::progress::bar(
            n as u64,
            &format!("decoding {} ({n} images)", split.split.name()),
            progress,
        );
        let pre = Preprocess {
            resize: size,
            crop: size,
            ..Preprocess::default()
        };
        let ctx = || format!("{}: cannot write the decoded store", tmp.display());
        let readers = rayon::ThreadPoolBuilder::new()
            .num_threads(READERS.max(rayon::current_num_threads()))
            .build()
            .context("cannot start the decoding threads")?;
        let mut buf = vec![0u8; BUILD_CHUNK * img_bytes];
        for (c, samples) in split.samples.chunks(BUILD_CHUNK).enumerate() {
            let buf = &mut buf[..samples.len() * img_bytes];
            readers.install(|| decode_into(samples, &pre, buf, img_bytes, &bar))?;
            let at = (HEADER + c * BUILD_CHUNK * img_bytes) as u64;
            f.write_all_at(buf, at).with_context(ctx)?;
        }
        bar.finish_and_clear();
        f.write_all_at(header, 0).with_context(ctx)?;
        f.sync_all().with_context(ctx)?;
        fs::rename(&tmp, path).with_context(ctx)?;
        let built = fs::metadata(path).with_context(ctx)?;
        atomic_io::write_atomic(&stamp_path(path), stamp(&built).as_bytes())
            .with_context(|| format!("{}: cannot stamp the decoded store", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Several decoded splits seen as one list of images (pretraining reads `unlabeled,train`).
pub struct ImageBank {
    pub splits: Vec<DecodedSplit>,
    offsets: Vec<usize>,
}

impl ImageBank {
    /// Pretraining's images: read in a shuffled order (see [`DecodedSplit::expect_random_reads`]).
    pub fn new(splits: Vec<DecodedSplit>) -> Self {
        let mut offsets = vec![0];
        for s in &splits {
            s.expect_random_reads();
            offsets.push(offsets.last().unwrap() + s.n);
        }
        ImageBank { splits, offsets }
    }

    pub fn len(&self) -> usize {
        *self.offsets.last().unwrap()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn size(&self) -> u32 {
        self.splits[0].size
    }

    fn locate(&self, i: usize) -> (usize, usize) {
        let s = self.offsets.partition_point(|&o| o <= i) - 1;
        (s, i - self.offsets[s])
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let (s, j) = self.locate(i);
        self.splits[s].image(j)
    }

    pub fn batch(&self, idx: &[usize]) -> Tensor {
        nchw_batch(idx.iter().map(|&i| self.image(i)), idx.len(), self.size())
    }
}

/// HWC images → one uint8 `[N,3,size,size]` tensor.
fn nchw_batch<'a>(images: impl Iterator<Item = &'a [u8]>, n: usize, size: u32) -> Tensor {
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
    use datasets::layout::Split;

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
