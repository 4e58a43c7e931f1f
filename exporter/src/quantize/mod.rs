//! `--quantize int8`: the exported fp32 graph (BN folded) rewritten in QDQ form — the form ONNX
//! Runtime fuses into integer kernels (QLinearConv, QLinearAdd, QLinearGlobalAveragePool):
//!
//! - weights: per output channel, symmetric int8 (zero point 0), behind DequantizeLinear;
//!   biases int32 at scale input_scale · weight_scale, as ONNX Runtime's quantizer writes them;
//! - activations: per tensor, uint8, from the min and max each reaches on calibration images
//!   (the eval transform of N training images), range widened to hold 0 — the inputs of every
//!   Conv, Add, MaxPool and GlobalAveragePool and the pooled output, each behind a
//!   QuantizeLinear → DequantizeLinear pair; a ReLU output's range starts at 0, so its zero
//!   point is 0 and the runtime folds the ReLU into the quantization;
//! - MaxPool's output shares its input's scale and zero point, so it runs on uint8 as is;
//! - normalisation and the classifier (one small Gemm) stay in float.

mod calibrate;
mod qdq;

use std::path::PathBuf;

use datasets::{Format, Split};
use models::preprocess::META_QUANTIZATION;
use models::Preprocess;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

use crate::error::ExportError;

/// `--quantize int8`: where the calibration images come from.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub data: PathBuf,
    pub split: Split,
    pub format: Option<Format>,
    /// How many images, spread evenly over the split.
    pub images: usize,
}

/// What the rewrite did, for the summary and the model's metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantSummary {
    pub activations: usize,
    pub conv_weights: usize,
    pub calibration_images: usize,
}

/// Rewrites `model` (fp32, BN folded, built with `pre`) in QDQ form, calibrated on `q`'s
/// images, and records how in its metadata.
pub fn quantize_model(
    model: &mut ModelProto,
    q: &QuantizeOptions,
    pre: &Preprocess,
) -> Result<QuantSummary, ExportError> {
    let images = calibrate::images(q, pre)?;
    let crop = pre.crop as usize;
    let n = images.len() / (3 * crop * crop);
    let names = calibrate::quantized_tensors(model.graph.as_ref().expect("a built model"));
    let ranges = calibrate::ranges(model, &names, &images, crop)?;
    let params = qdq::activation_params(model, &names, &ranges);
    let activations = params.len();
    let conv_weights = qdq::rewrite(model.graph.as_mut().expect("a built model"), params);
    let record = serde_json::json!({
        "scheme": "int8 QDQ: weights per output channel, symmetric int8; activations per \
                   tensor, uint8, calibration min/max",
        "calibration_data": q.data.display().to_string(),
        "calibration_split": q.split.name(),
        "calibration_images": n,
    });
    model.metadata_props.push(StringStringEntryProto {
        key: META_QUANTIZATION.into(),
        value: record.to_string(),
    });
    Ok(QuantSummary {
        activations,
        conv_weights,
        calibration_images: n,
    })
}
