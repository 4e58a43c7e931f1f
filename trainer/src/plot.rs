//! Figures: training curves (plotters, rendered into our own buffer and encoded as PNG with
//! `image`) and image grids. Text uses the embedded DejaVu Sans, so no system fonts are needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use plotters::prelude::*;
use serde_json::Value;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

fn save_png(img: &RgbImage, out: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .context("encoding PNG")?;
    models::weights::write_atomic(out, &bytes)?;
    Ok(())
}

type Series = Vec<(f64, f64)>;

fn series(records: &[Value], key: &str) -> Series {
    records
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    data: &Series,
    color: RGBColor,
    floor: Option<f64>,
) -> Result<()> {
    let (x0, x1) = data
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &(x, _)| (a.min(x), b.max(x)));
    let (mut y0, mut y1) = data
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &(_, y)| (a.min(y), b.max(y)));
    if let Some(f) = floor {
        y0 = y0.min(f);
        y1 = y1.max(f);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(6)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    if data.len() < 30 {
        chart
            .draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    if let Some(f) = floor {
        chart
            .draw_series(LineSeries::new(
                vec![(x0, f), (x1, f)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?
            .label(format!("random-init floor {:.1} %", 100.0 * f));
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    Ok(())
}

/// Loss, lr and (when measured) kNN top-1 against the step, side by side: the seed's Figure 3.
/// `floor`: a random-init kNN accuracy drawn as a reference line.
pub fn curves_with_floor(metrics: &Path, out: &Path, floor: Option<f64>) -> Result<()> {
    register_font();
    let records = crate::metrics::read(metrics)?;
    let loss = series(&records, "loss");
    if loss.is_empty() {
        bail!("{}: no logged steps to plot", metrics.display());
    }
    let lr = series(&records, "lr");
    let knn = series(&records, "knn_top1");
    let panels = if knn.is_empty() { 2 } else { 3 };
    let (w, h) = (420 * panels as u32, 360u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let areas = root.split_evenly((1, panels));
        panel(&areas[0], "InfoNCE loss", &loss, RED, None)?;
        panel(&areas[1], "learning rate", &lr, BLUE, None)?;
        if !knn.is_empty() {
            panel(&areas[2], "kNN top-1 (val)", &knn, GREEN, floor)?;
        }
        root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    let img = RgbImage::from_raw(w, h, buf).context("plot buffer")?;
    save_png(&img, out)
}

pub fn curves(metrics: &Path, out: &Path) -> Result<()> {
    curves_with_floor(metrics, out, None)
}

/// Tiles equally sized RGB images into a grid of `cols` columns with a 2-pixel white gutter.
pub fn grid(images: &[RgbImage], cols: usize, out: &Path) -> Result<()> {
    let (w, h) = images
        .first()
        .map(|i| i.dimensions())
        .context("no images")?;
    let g = 2u32;
    let cols = cols.max(1) as u32;
    let rows = (images.len() as u32).div_ceil(cols);
    let mut canvas =
        RgbImage::from_pixel(cols * (w + g) + g, rows * (h + g) + g, image::Rgb([255; 3]));
    for (i, img) in images.iter().enumerate() {
        let (r, c) = (i as u32 / cols, i as u32 % cols);
        image::imageops::replace(
            &mut canvas,
            img,
            (g + c * (w + g)) as i64,
            (g + r * (h + g)) as i64,
        );
    }
    save_png(&canvas, out)
}
