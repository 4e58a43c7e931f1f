//! The activation ranges: the fp32 graph run by tract over calibration images with every tensor
//! to quantize as an extra output.

use std::collections::HashSet;

use models::Preprocess;
use tract_onnx::pb::{GraphProto, ModelProto};
use tract_onnx::prelude::*;

use super::QuantizeOptions;
use crate::error::ExportError;
use crate::onnx_graph::value_info;

/// Ops whose activation inputs are quantized.
const QUANTIZED_OPS: [&str; 4] = ["Conv", "Add", "MaxPool", "GlobalAveragePool"];

/// The eval transform of `q.images` images spread over the split: `[n,3,crop,crop]` in [0,1].
pub fn images(q: &QuantizeOptions, p: &Preprocess) -> Result<Vec<f32>, ExportError> {
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
    let mut out = Vec::with_capacity(n * 3 * (p.crop * p.crop) as usize);
    for i in 0..n {
        let img = datasets::decode::load(&data.samples[i * total / n].source).map_err(flag)?;
        out.extend(datasets::transform::eval_tensor(img, p));
    }
    Ok(out)
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

/// The min and max every tensor of `names` reaches over `images` (`[n,3,crop,crop]`), run by
/// tract one image at a time (its fastest batch on a CPU) with those tensors as the outputs.
pub fn ranges(
    model: &ModelProto,
    names: &[String],
    images: &[f32],
    crop: usize,
) -> Result<Vec<(f32, f32)>, ExportError> {
    let err = |e: TractError| ExportError::Flag(format!("calibration: {e:#}"));
    let mut probe = model.clone();
    let g = probe.graph.as_mut().expect("a built model has a graph");
    g.output = names.iter().map(|n| value_info(n, None)).collect();
    let plan = tract_onnx::onnx()
        .model_for_proto_model(&probe)
        .map_err(err)?
        .with_input_fact(0, f32::fact([1, 3, crop, crop]).into())
        .map_err(err)?
        .into_optimized()
        .map_err(err)?
        .into_runnable()
        .map_err(err)?;
    let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); names.len()];
    for image in images.chunks(3 * crop * crop) {
        let input = Tensor::from_shape(&[1, 3, crop, crop], image).map_err(err)?;
        let outputs = plan.run(tvec!(input.into())).map_err(err)?;
        for (range, value) in ranges.iter_mut().zip(outputs.iter()) {
            for &v in value.to_plain_array_view::<f32>().map_err(err)?.iter() {
                range.0 = range.0.min(v);
                range.1 = range.1.max(v);
            }
        }
    }
    Ok(ranges)
}
