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
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
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
    atomic_io::write_atomic(out, &bytes)?;
    Ok(())
}

pub type Series = Vec<(f64, f64)>;

/// A panel's title and its named curves.
pub type NamedPanel = (String, Vec<(String, Series)>);

fn series(records: &[Value], x: &str, key: &str) -> Series {
    records
        .iter()
        .filter_map(|r| Some((r.get(x)?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// One curve of a panel; an empty label draws no legend entry.
struct Curve {
    label: String,
    data: Series,
    color: RGBColor,
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

fn bounds(curves: &[Curve], floor: Option<f64>) -> ((f64, f64), (f64, f64)) {
    let points = || curves.iter().flat_map(|c| c.data.iter().copied());
    let (x0, x1) = points().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(x), b.max(x)));
    let (mut y0, mut y1) =
        points().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(y), b.max(y)));
    if let Some(f) = floor {
        y0 = y0.min(f);
        y1 = y1.max(f);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    ((x0, x1), (y0 - pad, y1 + pad))
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    curves: &[Curve],
    floor: Option<f64>,
    legend_at: SeriesLabelPosition,
) -> Result<()> {
    let ((x0, x1), (y0, y1)) = bounds(curves, floor);
    // Short x ranges (a few epochs) need a decimal, or neighbouring ticks print alike.
    let decimals = if x1 - x0 < 10.0 { 1 } else { 0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_labels(6)
        .x_label_formatter(&|x| format!("{x:.decimals$}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(plot_err)?;
    let mut legend = false;
    for c in curves {
        let color = c.color;
        let drawn = chart
            .draw_series(LineSeries::new(
                c.data.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?;
        if !c.label.is_empty() {
            legend = true;
            drawn.label(c.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        }
        if c.data.len() < 30 {
            chart
                .draw_series(c.data.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_err)?;
        }
    }
    if let Some(f) = floor {
        legend = true;
        chart
            .draw_series(LineSeries::new(
                vec![(x0, f), (x1, f)],
                BLACK.stroke_width(1),
            ))
            .map_err(plot_err)?
            .label(format!("random-init floor {:.1} %", 100.0 * f))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(1)));
    }
    if legend {
        chart
            .configure_series_labels()
            .position(legend_at)
            .label_font(("sans-serif", 13))
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Panels side by side, 420×360 each, into a PNG; the legend at the right's middle.
fn figure(out: &Path, panels: &[(&str, &str, Vec<Curve>, Option<f64>)]) -> Result<()> {
    figure_with_legend(out, panels, SeriesLabelPosition::MiddleRight)
}

fn figure_with_legend(
    out: &Path,
    panels: &[(&str, &str, Vec<Curve>, Option<f64>)],
    legend_at: SeriesLabelPosition,
) -> Result<()> {
    register_font();
    let (w, h) = (420 * panels.len() as u32, 360u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let areas = root.split_evenly((1, panels.len()));
        for (area, (title, x, curves, floor)) in areas.iter().zip(panels) {
            panel(area, title, x, curves, *floor, legend_at.clone())?;
        }
        root.present().map_err(plot_err)?;
    }
    let img = RgbImage::from_raw(w, h, buf).context("plot buffer")?;
    save_png(&img, out)
}

fn one(data: Series, color: RGBColor) -> Vec<Curve> {
    vec![Curve {
        label: String::new(),
        data,
        color,
    }]
}

/// Loss, lr and (when measured) kNN top-1 against the step, side by side.
/// `floor`: a random-init kNN accuracy drawn as a reference line.
pub fn curves_with_floor(metrics: &Path, out: &Path, floor: Option<f64>) -> Result<()> {
    let records = crate::observe::metrics::read(metrics)?;
    let loss = series(&records, "step", "loss");
    if loss.is_empty() {
        bail!("{}: no logged steps to plot", metrics.display());
    }
    let knn = series(&records, "step", "knn_top1");
    let mut panels = vec![
        ("InfoNCE loss", "step", one(loss, RED), None),
        (
            "learning rate",
            "step",
            one(series(&records, "step", "lr"), BLUE),
            None,
        ),
    ];
    if !knn.is_empty() {
        panels.push(("kNN top-1 (val)", "step", one(knn, GREEN), floor));
    }
    figure(out, &panels)
}

/// Line colours of figures with several named curves (matplotlib's first eight).
const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(127, 127, 127),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Panels of named curves against `x`, side by side; a name keeps its colour across panels.
pub fn named_curves(out: &Path, x: &str, panels: &[NamedPanel]) -> Result<()> {
    let mut names: Vec<&str> = panels
        .iter()
        .flat_map(|(_, lines)| lines.iter().map(|(n, _)| n.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let color = |n: &str| COLORS[names.iter().position(|&m| m == n).unwrap_or(0) % COLORS.len()];
    let panels: Vec<(&str, &str, Vec<Curve>, Option<f64>)> = panels
        .iter()
        .map(|(title, lines)| {
            let curves = lines
                .iter()
                .map(|(label, data)| Curve {
                    label: label.clone(),
                    data: data.clone(),
                    color: color(label),
                })
                .collect();
            (title.as_str(), x, curves, None)
        })
        .collect();
    // Accuracy rising with the budget leaves the upper left empty.
    figure_with_legend(out, &panels, SeriesLabelPosition::UpperLeft)
}

/// Several runs against the epoch: loss, kNN top-1 (with the floor) and the drift gap, the
/// queries' cosine to the newest minus to the oldest queued keys (`neg_sim_*` in metrics.jsonl).
pub fn compare(runs: &[(String, &Path)], out: &Path, floor: Option<f64>) -> Result<()> {
    let (mut loss, mut knn, mut drift) = (vec![], vec![], vec![]);
    for (i, (label, metrics)) in runs.iter().enumerate() {
        let records = crate::observe::metrics::read(metrics)?;
        let curve = |data| Curve {
            label: label.clone(),
            data,
            color: COLORS[i % COLORS.len()],
        };
        loss.push(curve(series(&records, "epoch", "loss")));
        knn.push(curve(series(&records, "epoch", "knn_top1")));
        let newest = series(&records, "epoch", "neg_sim_newest");
        let oldest = series(&records, "epoch", "neg_sim_oldest");
        let gap = newest.iter().zip(&oldest).map(|(n, o)| (n.0, n.1 - o.1));
        drift.push(curve(gap.collect()));
    }
    figure(
        out,
        &[
            ("InfoNCE loss", "epoch", loss, None),
            ("kNN top-1 (val)", "epoch", knn, floor),
            ("drift: cos to newest − oldest keys", "epoch", drift, None),
        ],
    )
}

pub fn curves(metrics: &Path, out: &Path) -> Result<()> {
    curves_with_floor(metrics, out, None)
}

/// Tiles equally sized RGB images into a grid of `cols` columns with a 2-pixel white gutter.
pub fn grid(images: &[RgbImage], cols: usize, out: &Path) -> Result<()> {
    save_png(&grid_image(images, cols)?, out)
}

/// Equal-sized tiles in rows of `cols`, 2-pixel white gaps.
pub fn grid_image(images: &[RgbImage], cols: usize) -> Result<RgbImage> {
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
    Ok(canvas)
}
