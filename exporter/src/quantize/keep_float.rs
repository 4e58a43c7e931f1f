//! `--keep-float`: layers left in float because int8 costs them the most. A layer is a Conv (its
//! input activation and its weights) or the global average pool (its input and the pooled
//! features). Each is quantized alone, the rest of the network in float, and ranked by the error
//! it adds to the model's output on the check images; `auto` then tries the most sensitive in
//! float, one at a time, and keeps each that makes the int8 model agree with fp32 more often —
//! within a budget of multiply-adds left in float, since a float Conv runs several times slower
//! than an integer one.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use rayon::prelude::*;
use serde::Serialize;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};

use super::calibrate::QUANTIZED_OPS;
use super::qdq::{self, QParams};
use super::Reference;
use crate::error::ExportError;

/// `auto` tries at most this many layers: each try is one more model run over the check images.
pub const MAX_AUTO: usize = 3;

/// The share of the network's Conv multiply-adds `auto` may leave in float. One 3×3 Conv of a
/// resnet18 is about 6 % of them; in float it runs ≈ 4× slower than in int8 with ONNX Runtime,
/// so this budget costs at most ≈ 30 % of the int8 model's speed.
pub const MAX_FLOAT_SHARE: f64 = 0.10;

/// Images of the check set the one-layer models are measured on: the ranking needs the order of
/// errors, not their third digit, and there is one model per layer (53 for a resnet50).
pub const SENSITIVITY_IMAGES: usize = 64;

/// Which layers stay in float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepFloat {
    /// Ranked by measured sensitivity; up to [`MAX_AUTO`] of the most sensitive kept in float
    /// while each makes the model agree with fp32 more often.
    Auto,
    /// These layers (none for `none`), by node name: `conv1`, `layer4.1.conv2`,
    /// `layer1.0.downsample.0`, `avgpool`.
    Layers(Vec<String>),
}

impl FromStr for KeepFloat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(KeepFloat::Auto),
            "none" => Ok(KeepFloat::Layers(Vec::new())),
            _ => {
                let names: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
                if names.iter().any(String::is_empty) {
                    return Err(format!(
                        "`{s}`: auto, none, or layer names separated by commas"
                    ));
                }
                Ok(KeepFloat::Layers(names))
            }
        }
    }
}

/// A layer and the output error int8 costs it alone: ‖y_int8 − y_fp32‖² / ‖y_fp32‖² summed over
/// the images.
#[derive(Debug, Clone, Serialize)]
pub struct Sensitivity {
    pub layer: String,
    pub error: f64,
}

/// One try of `auto`: these layers in float, and how the model agreed.
#[derive(Debug, Clone, Serialize)]
pub struct FloatTry {
    pub layers: Vec<String>,
    /// Their share of the network's Conv multiply-adds.
    pub float_share: f64,
    pub top1_agreement: Option<f64>,
    pub output_cosine: f64,
}

/// The layers `--keep-float` can name, in graph order.
pub fn layers(g: &GraphProto) -> Vec<String> {
    g.node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "GlobalAveragePool")
        .map(|n| n.name.clone())
        .collect()
}

/// `names` checked against the graph's layers.
pub(super) fn named(g: &GraphProto, names: &[String]) -> Result<Vec<String>, ExportError> {
    let all = layers(g);
    match names.iter().find(|n| !all.contains(n)) {
        Some(bad) => Err(ExportError::Flag(format!(
            "--keep-float {bad}: no such layer; the layers are {}",
            all.join(", ")
        ))),
        None => Ok(names.to_vec()),
    }
}

/// `model` with `params`, every node of `float` left in float.
pub(super) fn apply(
    model: &ModelProto,
    params: &HashMap<String, QParams>,
    float: &HashSet<String>,
) -> (ModelProto, usize, usize) {
    let mut m = model.clone();
    let g = m.graph.as_mut().expect("a built model");
    let (activations, convs) = qdq::rewrite(g, params.clone(), float);
    (m, activations, convs)
}

/// Every layer's error when it alone is int8, most sensitive first.
pub(super) fn rank(
    model: &ModelProto,
    params: &HashMap<String, QParams>,
    reference: &Reference,
    images: &[f32],
    crop: usize,
) -> Result<Vec<Sensitivity>, ExportError> {
    let g = model.graph.as_ref().expect("a built model");
    let quantizable: HashSet<String> = g
        .node
        .iter()
        .filter(|n| QUANTIZED_OPS.contains(&n.op_type.as_str()))
        .map(|n| n.name.clone())
        .collect();
    let mut ranked = layers(g)
        .into_par_iter()
        .map(|layer| {
            let mut float = quantizable.clone();
            float.remove(&layer);
            let (alone, _, _) = apply(model, params, &float);
            let error = reference.relative_error(&alone, images, crop)?;
            Ok(Sensitivity { layer, error })
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    ranked.sort_by(|a, b| b.error.total_cmp(&a.error));
    Ok(ranked)
}

/// Multiply-adds of each Conv of `g` for one `crop`×`crop` image, by node name: the spatial size
/// followed through the graph's Conv and MaxPool nodes (every other node keeps its input's).
pub(super) fn conv_macs(g: &GraphProto, crop: usize) -> HashMap<String, f64> {
    let ints = |n: &NodeProto, name: &str, default: i64| -> Vec<i64> {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .map_or(vec![default; 4], |a| a.ints.clone())
    };
    let weights: HashMap<&str, &[i64]> = g
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice()))
        .collect();
    let mut side: HashMap<&str, i64> = g
        .input
        .iter()
        .map(|i| (i.name.as_str(), crop as i64))
        .collect();
    let mut macs = HashMap::new();
    for n in &g.node {
        let Some(&x) = side.get(n.input[0].as_str()) else {
            continue;
        };
        let out = match n.op_type.as_str() {
            "Conv" | "MaxPool" => {
                let w = weights.get(n.input.get(1).map_or("", String::as_str));
                let k = w.map_or(ints(n, "kernel_shape", 1)[0], |w| w[2]);
                let (s, p) = (ints(n, "strides", 1)[0], ints(n, "pads", 0));
                let y = (x + p[0] + p[2] - k) / s + 1;
                if let Some(w) = w {
                    let per_pixel: i64 = w.iter().product();
                    macs.insert(n.name.clone(), (y * y * per_pixel) as f64);
                }
                y
            }
            "GlobalAveragePool" => 1,
            _ => x,
        };
        side.insert(n.output[0].as_str(), out);
    }
    macs
}

/// Whether `b` agrees with fp32 better than `a`: more top-1 matches with logits; without them, a
/// fifth less output error.
pub(super) fn better(b: &FloatTry, a: &FloatTry) -> bool {
    match (b.top1_agreement, a.top1_agreement) {
        (Some(tb), Some(ta)) => tb > ta,
        _ => (1.0 - b.output_cosine) < 0.8 * (1.0 - a.output_cosine),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_reads_auto_none_or_names() {
        assert_eq!("auto".parse(), Ok(KeepFloat::Auto));
        assert_eq!("none".parse(), Ok(KeepFloat::Layers(Vec::new())));
        assert_eq!(
            "conv1, avgpool".parse(),
            Ok(KeepFloat::Layers(vec!["conv1".into(), "avgpool".into()]))
        );
        assert!("conv1,,fc".parse::<KeepFloat>().is_err());
    }

    #[test]
    fn multiply_adds_follow_the_spatial_size_through_strides_and_pools() {
        use crate::onnx_graph::{attr_ints, value_info};
        use tract_onnx::pb::TensorProto;
        let node = |op: &str, name: &str, inputs: &[&str], attrs: &[(&str, i64)]| NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.into()],
            attribute: attrs
                .iter()
                .map(|(a, v)| {
                    attr_ints(
                        a,
                        &if *a == "pads" {
                            vec![*v; 4]
                        } else {
                            vec![*v; 2]
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        let weight = |name: &str, dims: &[i64]| TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            ..Default::default()
        };
        let g = GraphProto {
            input: vec![value_info("image", None)],
            initializer: vec![weight("w1", &[64, 3, 7, 7]), weight("w2", &[64, 64, 3, 3])],
            node: vec![
                node(
                    "Conv",
                    "conv1",
                    &["image", "w1"],
                    &[("strides", 2), ("pads", 3)],
                ),
                node("Relu", "relu", &["conv1"], &[]),
                node(
                    "MaxPool",
                    "maxpool",
                    &["relu"],
                    &[("kernel_shape", 3), ("strides", 2), ("pads", 1)],
                ),
                node("Conv", "layer1.0.conv1", &["maxpool", "w2"], &[("pads", 1)]),
            ],
            ..Default::default()
        };
        let macs = conv_macs(&g, 96);
        assert_eq!(macs["conv1"], (48 * 48 * 64 * 3 * 49) as f64);
        assert_eq!(macs["layer1.0.conv1"], (24 * 24 * 64 * 64 * 9) as f64);
    }

    #[test]
    fn more_top1_matches_win_and_without_logits_a_fifth_less_error() {
        let t = |top1: Option<f64>, cos: f64| FloatTry {
            layers: Vec::new(),
            float_share: 0.0,
            top1_agreement: top1,
            output_cosine: cos,
        };
        assert!(better(&t(Some(0.95), 0.99), &t(Some(0.94), 0.999)));
        assert!(!better(&t(Some(0.94), 0.999), &t(Some(0.94), 0.99)));
        assert!(better(&t(None, 0.9993), &t(None, 0.999)));
        assert!(!better(&t(None, 0.9991), &t(None, 0.999)));
    }
}
