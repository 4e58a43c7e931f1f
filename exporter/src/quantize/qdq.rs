//! The QDQ rewrite: QuantizeLinear after every calibrated tensor's producer, one
//! DequantizeLinear per consumer, Conv weights and biases quantized behind their own.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto};

use crate::onnx_graph::attr_int;

/// Scale and zero point of a uint8 tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    scale: f32,
    zero_point: u8,
}

impl QParams {
    /// uint8 over [min, max] widened to hold 0 (so 0 is exact: padding, ReLU).
    fn from_range(min: f32, max: f32) -> Self {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        if hi - lo <= f32::EPSILON {
            return QParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let scale = (hi - lo) / 255.0;
        QParams {
            scale,
            zero_point: (-lo / scale).round().clamp(0.0, 255.0) as u8,
        }
    }
}

/// Each calibrated tensor's parameters; MaxPool's output shares its input's, so the runtime
/// pools the uint8 values directly.
pub fn activation_params(
    model: &ModelProto,
    names: &[String],
    ranges: &[(f32, f32)],
) -> HashMap<String, QParams> {
    let mut params: HashMap<String, QParams> = names
        .iter()
        .zip(ranges)
        .map(|(n, (lo, hi))| (n.clone(), QParams::from_range(*lo, *hi)))
        .collect();
    let g = model.graph.as_ref().expect("a built model");
    for n in g.node.iter().filter(|n| n.op_type == "MaxPool") {
        if let Some(p) = params.get(&n.input[0]).copied() {
            params.insert(n.output[0].clone(), p);
        }
    }
    params
}

fn scalar_f32(name: &str, v: f32) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        raw_data: v.to_le_bytes().to_vec(),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[usize], dtype: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dtype as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, axis: Option<i64>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: axis.map(|a| attr_int("axis", a)).into_iter().collect(),
        ..Default::default()
    }
}

fn f32s(t: &TensorProto) -> Vec<f32> {
    t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A Conv's weight and bias as int8 per output channel and int32, each behind its
/// DequantizeLinear; returns the nodes, the new initializers and the dequantized names.
fn quantize_conv_weights(
    w: &TensorProto,
    b: Option<&TensorProto>,
    x: QParams,
) -> (Vec<NodeProto>, Vec<TensorProto>, Vec<String>) {
    let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
    let values = f32s(w);
    let per = values.len() / dims[0];
    let scales: Vec<f32> = values
        .chunks(per)
        .map(|c| {
            c.iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(f32::MIN_POSITIVE)
                / 127.0
        })
        .collect();
    let q: Vec<u8> = values
        .chunks(per)
        .zip(&scales)
        .flat_map(|(c, s)| {
            c.iter()
                .map(move |v| (v / s).round().clamp(-127.0, 127.0) as i8 as u8)
        })
        .collect();
    let raw_f32 = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let n = &w.name;
    let mut inits = vec![
        tensor(&format!("{n}.q"), &dims, DataType::Int8, q),
        tensor(
            &format!("{n}.scale"),
            &[dims[0]],
            DataType::Float,
            raw_f32(&scales),
        ),
        tensor(
            &format!("{n}.zero_point"),
            &[dims[0]],
            DataType::Int8,
            vec![0; dims[0]],
        ),
    ];
    let wq = format!("{n}.dq");
    let mut nodes = vec![node(
        "DequantizeLinear",
        &[
            &format!("{n}.q"),
            &format!("{n}.scale"),
            &format!("{n}.zero_point"),
        ],
        &wq,
        Some(0),
    )];
    let mut names = vec![wq];
    if let Some(b) = b {
        let bn = &b.name;
        let bscale: Vec<f32> = scales.iter().map(|s| s * x.scale).collect();
        let bq: Vec<u8> = f32s(b)
            .iter()
            .zip(&bscale)
            .flat_map(|(v, s)| {
                ((v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes()
            })
            .collect();
        inits.push(tensor(&format!("{bn}.q"), &[dims[0]], DataType::Int32, bq));
        inits.push(tensor(
            &format!("{bn}.scale"),
            &[dims[0]],
            DataType::Float,
            raw_f32(&bscale),
        ));
        inits.push(tensor(
            &format!("{bn}.zero_point"),
            &[dims[0]],
            DataType::Int32,
            vec![0; 4 * dims[0]],
        ));
        let bdq = format!("{bn}.dq");
        nodes.push(node(
            "DequantizeLinear",
            &[
                &format!("{bn}.q"),
                &format!("{bn}.scale"),
                &format!("{bn}.zero_point"),
            ],
            &bdq,
            Some(0),
        ));
        names.push(bdq);
    }
    (nodes, inits, names)
}

/// The graph being rewritten: nodes and initializers in their new order.
struct Rewrite {
    params: HashMap<String, QParams>,
    weights: HashMap<String, TensorProto>,
    kept: HashMap<String, TensorProto>,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
}

impl Rewrite {
    fn quantize_output(&mut self, t: &str) {
        let Some(p) = self.params.get(t).copied() else {
            return;
        };
        self.inits.push(scalar_f32(&format!("{t}.scale"), p.scale));
        self.inits.push(tensor(
            &format!("{t}.zero_point"),
            &[],
            DataType::Uint8,
            vec![p.zero_point],
        ));
        self.nodes.push(node(
            "QuantizeLinear",
            &[t, &format!("{t}.scale"), &format!("{t}.zero_point")],
            &format!("{t}.q"),
            None,
        ));
    }

    /// Node `i`'s quantized inputs read from their own DequantizeLinear.
    fn dequantize_inputs(&mut self, n: &mut NodeProto, i: usize) {
        for input in n.input.iter_mut() {
            if self.params.contains_key(input.as_str()) {
                let dq = format!("{input}.dq.{i}");
                self.nodes.push(node(
                    "DequantizeLinear",
                    &[
                        &format!("{input}.q"),
                        &format!("{input}.scale"),
                        &format!("{input}.zero_point"),
                    ],
                    &dq,
                    None,
                ));
                *input = dq;
            }
        }
    }

    fn quantize_conv(&mut self, n: &mut NodeProto, x: &str) {
        let bias = n.input.get(2).map(|b| &self.weights[b]);
        let (qn, qi, dq) = quantize_conv_weights(&self.weights[&n.input[1]], bias, self.params[x]);
        self.nodes.extend(qn);
        self.inits.extend(qi);
        n.input[1] = dq[0].clone();
        if let Some(b) = dq.get(1) {
            n.input[2] = b.clone();
        }
    }

    fn keep_weights(&mut self, n: &NodeProto) {
        for input in &n.input {
            if let Some(w) = self.weights.get(input) {
                self.kept.insert(input.clone(), w.clone());
            }
        }
    }
}

/// `params` less what nothing quantized reads: the pooled output of a GlobalAveragePool kept in
/// float, and every tensor whose readers are all in `float`.
fn prune(
    g: &GraphProto,
    mut params: HashMap<String, QParams>,
    float: &HashSet<String>,
) -> HashMap<String, QParams> {
    for n in g.node.iter().filter(|n| float.contains(&n.name)) {
        if n.op_type == "GlobalAveragePool" {
            params.remove(&n.output[0]);
        }
    }
    params.retain(|t, _| {
        g.node
            .iter()
            .any(|n| !float.contains(&n.name) && n.input.iter().any(|i| i == t))
    });
    params
}

/// Rewrites `g` with `params`, leaving the nodes named in `float` as they are (they read their
/// inputs unquantized, a Conv keeps its float weights); returns how many activations and how
/// many Conv weights were quantized.
pub fn rewrite(
    g: &mut GraphProto,
    params: HashMap<String, QParams>,
    float: &HashSet<String>,
) -> (usize, usize) {
    let mut r = Rewrite {
        params: prune(g, params, float),
        weights: std::mem::take(&mut g.initializer)
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect(),
        kept: HashMap::new(),
        inits: Vec::new(),
        nodes: Vec::new(),
    };
    let mut convs = 0;
    for (i, mut n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        let x = n.input[0].clone();
        let in_float = float.contains(&n.name);
        if !in_float {
            r.dequantize_inputs(&mut n, i);
        }
        if n.op_type == "Conv" && !in_float {
            r.quantize_conv(&mut n, &x);
            convs += 1;
        } else {
            r.keep_weights(&n);
        }
        let out = n.output[0].clone();
        r.nodes.push(n);
        r.quantize_output(&out);
    }
    let activations = r.params.len();
    g.node = r.nodes;
    let mut inits: Vec<TensorProto> = r.kept.into_values().collect();
    inits.sort_by(|a, b| a.name.cmp(&b.name));
    inits.extend(r.inits);
    g.initializer = inits;
    (activations, convs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_holds_zero_exactly() {
        let p = QParams::from_range(0.0, 6.0);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 6.0 / 255.0).abs() < 1e-7);
        let p = QParams::from_range(-1.0, 3.0);
        let zero = (0.0 / p.scale + p.zero_point as f32).round();
        assert_eq!((zero - p.zero_point as f32) * p.scale, 0.0);
        assert_eq!(p.zero_point, 64);
        // Ranges that do not hold 0 are widened to it.
        assert_eq!(QParams::from_range(2.0, 4.0).zero_point, 0);
        assert_eq!(QParams::from_range(-4.0, -2.0).zero_point, 255);
    }
}
