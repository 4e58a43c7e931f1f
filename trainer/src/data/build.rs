//! Building a store: the space reserved first, then the images decoded in parallel chunks and
//! written with pwrite into a temp file that is renamed when complete.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use datasets::layout::SplitData;
use datasets::transform::eval_crop;
use models::Preprocess;
use rayon::prelude::*;

use super::format::HEADER;
use super::guard::{remove_killed_builds, stamp, stamp_path};

/// Fails before the build when the cache folder's filesystem cannot take `len` more bytes.
pub(super) fn check_space(path: &Path, len: u64) -> Result<()> {
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
pub(super) const BUILD_CHUNK: usize = 1024;

/// Files read (and decoded) at once while a store is built. Small image files on a cold page
/// cache make the build wait on the disk, one read per thread: measured on this project's
/// 2-core machine, 2 readers fetched 206 PNGs/s and 16 fetched 2,400/s, while decoding alone
/// runs at ≈ 12,000/s. More threads than cores cost nothing when the files are cached.
pub(super) const READERS: usize = 16;

/// Decodes `samples` into consecutive `img_bytes` slots of `buf`; the first failure is returned.
pub(super) fn decode_into(
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

pub(super) fn build(
    split: &SplitData,
    size: u32,
    path: &Path,
    header: &[u8],
    progress: bool,
) -> Result<()> {
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
        let bar = crate::runtime::progress::bar(
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
