//! The calibration pass: the fp32 graph run by tract over calibration images with every tensor
//! to quantize as an output, into histograms; and a model's outputs on the check images.

use std::collections::HashSet;
use std::sync::Arc;

use models::Preprocess;
use tract_onnx::pb::{GraphProto, ModelProto};
use tract_onnx::prelude::*;

use super::ranges::Histogram;
use super::QuantizeOptions;
use crate::error::ExportError;
use crate::onnx_graph::value_info;

/// Ops whose activation inputs are quantized.
pub const QUANTIZED_OPS: [&str; 4] = ["Conv", "Add", "MaxPool", "GlobalAveragePool"];

/// At most this many images are held back from calibration to check the int8 model.
pub const HELD_BACK: usize = 256;

/// Calibration and check images, each `[n,3,crop,crop]` in [0,1] after the eval transform.
pub struct CalibrationImages {
    pub calibrate: Vec<f32>,
    /// Other images of the same split (the calibration images themselves when the split has
    /// no others): the int8 model's predictions are compared with fp32's on them.
    pub check: Vec<f32>,
    pub held_back: bool,
}

/// `q.images` images for calibration and up to [`HELD_BACK`] others for the check, all spread
/// evenly over the split and disjoint while the split has enough images.
pub fn images(q: &QuantizeOptions, p: &Preprocess) -> Result<CalibrationImages, ExportError> {
    let flag = |e: datasets::DataError| ExportError::Flag(format!("--calibration-data: {e}"));
    let data = datasets::open(&q.data, q.split, q.format).map_err(flag)?;
    let total = data.samples.len();
    if total == 0 || q.images == 0 {
        return Err(ExportError::Flag(format!(
            "--calibration-data {}: no images to calibrate on ({total} in split {}, {} asked)",
            q.data.display(),
            q.split.name(),
            q.images
        )));
    }
    let n = q.images.min(total);
    let held = HELD_BACK.min(total - n);
    let m = n + held;
    let load = |i: usize, out: &mut Vec<f32>| -> Result<(), ExportError> {
        let img = datasets::decode::load(&data.samples[i * total / m].source).map_err(flag)?;
        out.extend(datasets::transform::eval_tensor(img, p));
        Ok(())
    };
    let (mut calibrate, mut check) = (Vec::new(), Vec::new());
    for k in 0..m {
        // Every (m / held)-th point is held back, so both sets cover the whole split.
        let held_here = held > 0 && (k + 1) * held / m > k * held / m;
        load(
            k,
            if held_here {
                &mut check
            } else {
                &mut calibrate
            },
        )?;
    }
    let held_back = !check.is_empty();
    if !held_back {
        let per = 3 * (p.crop * p.crop) as usize;
        check = calibrate[..HELD_BACK.min(n) * per].to_vec();
    }
    Ok(CalibrationImages {
        calibrate,
        check,
        held_back,
    })
}

/// The tensors to quantize, in graph order: activation inputs of [`QUANTIZED_OPS`] and the
/// pooled output.
pub fn quantized_tensors(g: &GraphProto) -> Vec<String> {
    let weights: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for node in &g.node {
        if !QUANTIZED_OPS.contains(&node.op_type.as_str()) {
            continue;
        }
        let mut add = |t: &str| {
            if !weights.contains(t) && seen.insert(t.to_string()) {
                out.push(t.to_string());
            }
        };
        for input in &node.input {
            add(input);
        }
        if node.op_type == "GlobalAveragePool" {
            add(&node.output[0]);
        }
    }
    out
}

type Plan = Arc<TypedRunnableModel>;

/// `model` planned by tract for one image at a time (its fastest batch on a CPU), with `outputs`
/// as its outputs (all of the graph's when None).
fn plan(model: &ModelProto, outputs: Option<&[String]>, crop: usize) -> Result<Plan, ExportError> {
    let mut probe = model.clone();
    if let Some(names) = outputs {
        let g = probe.graph.as_mut().expect("a built model has a graph");
        g.output = names.iter().map(|n| value_info(n, None)).collect();
    }
    tract_onnx::onnx()
        .model_for_proto_model(&probe)
        .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, crop, crop]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(tract_error)
}

fn tract_error(e: TractError) -> ExportError {
    ExportError::Flag(format!("calibration: {e:#}"))
}

/// Runs `plan` on every image of `images` and hands each output's values to `f(output, values)`.
fn for_each_output(
    plan: &Plan,
    images: &[f32],
    crop: usize,
    mut f: impl FnMut(usize, &[f32]),
) -> Result<(), ExportError> {
    for image in images.chunks(3 * crop * crop) {
        let input = Tensor::from_shape(&[1, 3, crop, crop], image).map_err(tract_error)?;
        let outputs = plan.run(tvec!(input.into())).map_err(tract_error)?;
        for (i, value) in outputs.iter().enumerate() {
            let view = value.to_plain_array_view::<f32>().map_err(tract_error)?;
            f(i, view.as_slice().expect("a plain tensor is contiguous"));
        }
    }
    Ok(())
}

/// The histogram of every tensor of `names` over `images`: one pass for each tensor's min and
/// max, a second to count its values in bins over them.
pub fn histograms(
    model: &ModelProto,
    names: &[String],
    images: &[f32],
    crop: usize,
) -> Result<Vec<Histogram>, ExportError> {
    let plan = plan(model, Some(names), crop)?;
    let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); names.len()];
    for_each_output(&plan, images, crop, |i, values| {
        for &v in values {
            ranges[i] = (ranges[i].0.min(v), ranges[i].1.max(v));
        }
    })?;
    let mut hists: Vec<Histogram> = ranges
        .iter()
        .map(|&(lo, hi)| Histogram::new(lo, hi))
        .collect();
    for_each_output(&plan, images, crop, |i, values| {
        hists[i].add(values.iter().copied())
    })?;
    Ok(hists)
}

/// The `output` tensor of `model` for every image of `images`, one vector per image.
pub fn outputs(
    model: &ModelProto,
    output: &str,
    images: &[f32],
    crop: usize,
) -> Result<Vec<Vec<f32>>, ExportError> {
    let plan = plan(model, Some(&[output.to_string()]), crop)?;
    let mut out = Vec::new();
    for_each_output(&plan, images, crop, |_, v| out.push(v.to_vec()))?;
    Ok(out)
}
