//! The second lowering of `models::ResNetDesc`: ONNX nodes. Value names follow the torchvision
//! modules that produce them (`layer2.0.bn1`, `layer2.0`), so a graph viewer reads like the
//! PyTorch model.

use models::{ConvBn, Linear, Lowering, ResNetDesc, TensorMap};

use crate::fold::fold_conv_bn;
use crate::onnx_graph::{attr_float, attr_int, attr_ints, GraphBuilder};

fn f32s(map: &TensorMap, name: &str) -> Vec<f32> {
    map.tensors[name].to_f32()
}

/// conv → BN, either folded into one Conv with bias or kept as Conv + BatchNormalization.
fn conv_bn(g: &mut GraphBuilder, unit: &ConvBn, map: &TensorMap, x: &str, fold: bool) -> String {
    let c = &unit.conv;
    let (k, s, p) = (c.kernel as i64, c.stride as i64, c.padding as i64);
    let attrs = || {
        vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[s, s]),
            attr_ints("pads", &[p, p, p, p]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
        ]
    };
    let wshape = c.weight_shape();
    let bn = &unit.bn;
    if fold {
        let folded = fold_conv_bn(unit, map);
        let w = g.initializer(&format!("{}.weight", c.name), &wshape, &folded.weight);
        let b = g.initializer(&format!("{}.bias", c.name), &[c.out_channels], &folded.bias);
        return g.node("Conv", &c.name, &[x, &w, &b], &bn.name, attrs());
    }
    let wname = format!("{}.weight", c.name);
    let w = g.initializer(&wname, &wshape, &f32s(map, &wname));
    let y = g.node("Conv", &c.name, &[x, &w], &c.name, attrs());
    let ch = [bn.channels];
    let leaf = |leaf: &str| format!("{}.{leaf}", bn.name);
    let inputs: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .map(|l| g.initializer(&leaf(l), &ch, &f32s(map, &leaf(l))))
        .collect();
    g.node(
        "BatchNormalization",
        &bn.name,
        &[&y, &inputs[0], &inputs[1], &inputs[2], &inputs[3]],
        &bn.name,
        vec![attr_float("epsilon", bn.eps as f32)],
    )
}

fn relu(g: &mut GraphBuilder, x: &str, out: &str) -> String {
    g.node("Relu", out, &[x], out, vec![])
}

/// The ONNX side of [`Lowering`]: values are node output names.
struct OnnxLowering<'a> {
    g: &'a mut GraphBuilder,
    map: &'a TensorMap,
    fold: bool,
}

impl Lowering for OnnxLowering<'_> {
    type Value = String;

    fn share(&self, x: &String) -> String {
        x.clone()
    }

    fn conv_bn(&mut self, unit: &ConvBn, x: &String) -> String {
        conv_bn(self.g, unit, self.map, x, self.fold)
    }

    fn relu(&mut self, x: &String, name: &str) -> String {
        relu(self.g, x, name)
    }

    fn add(&mut self, a: &String, b: &String, name: &str) -> String {
        self.g.node("Add", name, &[a, b], name, vec![])
    }
}

/// Emits the backbone from `x` (normalised image) to pooled `features` [N, D]; returns its name.
pub fn lower_backbone(
    g: &mut GraphBuilder,
    desc: &ResNetDesc,
    map: &TensorMap,
    x: &str,
    fold: bool,
) -> String {
    let stem = &desc.stem;
    let y = conv_bn(g, &stem.conv_bn, map, x, fold);
    let y = relu(g, &y, "relu");
    let (k, s, p) = (
        stem.pool_kernel as i64,
        stem.pool_stride as i64,
        stem.pool_padding as i64,
    );
    let mut x = g.node(
        "MaxPool",
        "maxpool",
        &[&y],
        "maxpool",
        vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[s, s]),
            attr_ints("pads", &[p, p, p, p]),
        ],
    );
    let mut onnx = OnnxLowering { g, map, fold };
    for block in desc.stages.iter().flat_map(|s| &s.blocks) {
        x = block.lower(&mut onnx, &x);
    }
    let g = onnx.g;
    let pooled = g.node("GlobalAveragePool", "avgpool", &[&x], "avgpool", vec![]);
    g.node(
        "Flatten",
        "flatten",
        &[&pooled],
        "features",
        vec![attr_int("axis", 1)],
    )
}

/// `y = x Wᵀ + b` as one Gemm (transB), the ONNX form of `nn.Linear`.
pub fn lower_linear(
    g: &mut GraphBuilder,
    fc: &Linear,
    map: &TensorMap,
    x: &str,
    out: &str,
) -> String {
    let w = g.initializer(
        &format!("{}.weight", fc.name),
        &[fc.out_features, fc.in_features],
        &f32s(map, &format!("{}.weight", fc.name)),
    );
    let b = g.initializer(
        &format!("{}.bias", fc.name),
        &[fc.out_features],
        &f32s(map, &format!("{}.bias", fc.name)),
    );
    g.node(
        "Gemm",
        &fc.name,
        &[x, &w, &b],
        out,
        vec![attr_int("transB", 1)],
    )
}
