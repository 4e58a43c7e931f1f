//! Eval-mode BatchNorm folded into the preceding convolution, computed in f64:
//! `y = γ (conv(x) − μ) / √(σ² + ε) + β  =  conv'(x) + b'` with
//! `W' = W · γ/√(σ²+ε)` per output channel and `b' = β − μ · γ/√(σ²+ε)`.

use models::{ConvBn, TensorMap};

pub struct FoldedConv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

fn values(map: &TensorMap, name: &str) -> Vec<f64> {
    map.tensors[name]
        .to_f32()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Tensors must have been checked against the description (`TensorMap::check`) first.
pub fn fold_conv_bn(unit: &ConvBn, map: &TensorMap) -> FoldedConv {
    let bn = &unit.bn.name;
    let w = values(map, &format!("{}.weight", unit.conv.name));
    let gamma = values(map, &format!("{bn}.weight"));
    let beta = values(map, &format!("{bn}.bias"));
    let mean = values(map, &format!("{bn}.running_mean"));
    let var = values(map, &format!("{bn}.running_var"));
    let per_out = w.len() / unit.conv.out_channels;
    let scale: Vec<f64> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + unit.bn.eps).sqrt())
        .collect();
    let weight = w
        .chunks(per_out)
        .zip(&scale)
        .flat_map(|(row, s)| row.iter().map(move |x| (x * s) as f32))
        .collect();
    let bias = (0..scale.len())
        .map(|o| (beta[o] - mean[o] * scale[o]) as f32)
        .collect();
    FoldedConv { weight, bias }
}
