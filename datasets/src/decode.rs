//! Image bytes → 8-bit RGB, with the conversions documented in the README:
//! grayscale is replicated to three channels, alpha is dropped (not composited), 16-bit samples
//! are scaled to 8 bits, palette PNGs are expanded — what `PIL.Image.convert("RGB")` does.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use image::RgbImage;

use crate::error::{DataError, Result};
use crate::layout::{ImageSource, STL10_IMAGE_BYTES};

/// Largest side accepted: far above any dataset this tool is for, and small enough that a file
/// that claims a huge size is refused before anything is allocated for it.
pub const MAX_SIDE: u32 = 8192;
/// The decoder's allocation ceiling (an 8192² RGBA 16-bit image fits).
const MAX_ALLOC: u64 = 640 << 20;

pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let format =
        image::guess_format(bytes).map_err(|_| DataError::file(path, "not a PNG or JPEG image"))?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| DataError::file(path, format!("cannot decode image: {e}")))?;
    Ok(img.into_rgb8())
}

pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_bytes(&bytes, path)
}

/// STL-10 stores each image as three 96×96 planes, each column-major (MATLAB order).
pub fn stl10_image(raw: &[u8]) -> RgbImage {
    debug_assert_eq!(raw.len(), STL10_IMAGE_BYTES);
    let plane = 96 * 96;
    RgbImage::from_fn(96, 96, |x, y| {
        let at = (x * 96 + y) as usize;
        image::Rgb([raw[at], raw[plane + at], raw[2 * plane + at]])
    })
}

pub fn load(source: &ImageSource) -> Result<RgbImage> {
    match source {
        ImageSource::File(p) => decode_file(p),
        ImageSource::Stl10 { file, index } => {
            let f = File::open(file).map_err(|e| DataError::io(file, e))?;
            let mut raw = vec![0u8; STL10_IMAGE_BYTES];
            f.read_exact_at(&mut raw, (*index * STL10_IMAGE_BYTES) as u64)
                .map_err(|e| DataError::file(file, format!("image {index}: {e}")))?;
            Ok(stl10_image(&raw))
        }
    }
}
