//! What `moco-infer` needs from an ONNX file before running it: the input/outputs it expects
//! and the preprocessing and class names in its metadata (SPEC "ONNX model").

use std::collections::HashMap;
use std::path::Path;

use models::preprocess::{META_ARCH, META_CLASSES};
use models::Preprocess;
use prost::Message;
use tract_onnx::pb::{
    tensor_proto::DataType, tensor_shape_proto::dimension::Value as DimValue, type_proto,
    GraphProto, ModelProto,
};

use crate::InferError;

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub preprocess: Preprocess,
    pub classes: Vec<String>,
    pub arch: String,
    /// Output names in graph order (`logits`, maybe `features`).
    pub outputs: Vec<String>,
    pub num_classes: usize,
    /// `moco.quantization` (moco-export --quantize), as written; None for an fp32 model.
    pub quantization: Option<serde_json::Value>,
}

fn dims(vi: &tract_onnx::pb::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    match vi.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(
            t.shape
                .as_ref()?
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(DimValue::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect(),
        ),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The operators moco-export (and torch.onnx.export of the same network) writes, with how many
/// inputs each takes; each has one output. A node outside this, or of another arity, is refused
/// here: tract's importer indexes a node's inputs and outputs without checking them.
const OPS: [(&str, usize, usize); 12] = [
    ("Sub", 2, 2),
    ("Div", 2, 2),
    ("Conv", 2, 3),
    ("BatchNormalization", 5, 5),
    ("Relu", 1, 1),
    ("MaxPool", 1, 1),
    ("Add", 2, 2),
    ("GlobalAveragePool", 1, 1),
    ("Flatten", 1, 1),
    ("Gemm", 2, 3),
    ("QuantizeLinear", 2, 3),
    ("DequantizeLinear", 2, 3),
];

fn check_nodes(graph: &GraphProto) -> Result<(), String> {
    for n in &graph.node {
        let Some(&(op, min, max)) = OPS.iter().find(|(op, ..)| *op == n.op_type) else {
            return Err(format!(
                "node `{}`: operator `{}` is not one moco-export writes",
                n.name, n.op_type
            ));
        };
        let (i, o) = (n.input.len(), n.output.len());
        if !(min..=max).contains(&i) || o != 1 || n.input.iter().any(String::is_empty) {
            return Err(format!(
                "node `{}` ({op}) has {i} inputs and {o} outputs; expected {min}–{max} named \
                 inputs and 1 output",
                n.name
            ));
        }
    }
    Ok(())
}

/// The element types tract reads an initializer's raw bytes as (its importer panics on any
/// other, a string tensor for one): the numeric ones and bool.
const RAW_TYPES: [DataType; 12] = [
    DataType::Float,
    DataType::Uint8,
    DataType::Int8,
    DataType::Uint16,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::Bool,
    DataType::Float16,
    DataType::Double,
    DataType::Uint32,
    DataType::Uint64,
];

fn check_initializers(graph: &GraphProto) -> Result<(), String> {
    for t in &graph.initializer {
        if !RAW_TYPES.iter().any(|d| *d as i32 == t.data_type) {
            let name = DataType::try_from(t.data_type).map_or("unknown", |d| d.as_str_name());
            return Err(format!(
                "initializer `{}` holds {name} elements (data type {}); expected numbers",
                t.name, t.data_type
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a graph input, an initializer or a node's output (tract's importer panics
/// on a graph output that is none of these).
fn produced(graph: &GraphProto, name: &str) -> bool {
    graph.input.iter().any(|i| i.name == name)
        || graph.initializer.iter().any(|t| t.name == name)
        || graph
            .node
            .iter()
            .any(|n| n.output.iter().any(|o| o == name))
}

/// Parses and validates the model's interface (the weights are left to the runtime).
pub fn parse_model_info(bytes: &[u8], path: &Path) -> Result<ModelInfo, InferError> {
    let bad = |m: String| InferError::Model(format!("{}: {m}", path.display()));
    let model = ModelProto::decode(bytes).map_err(|e| bad(format!("not an ONNX model ({e})")))?;
    let graph = model.graph.as_ref().ok_or_else(|| bad("no graph".into()))?;
    let meta: HashMap<String, String> = model
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let preprocess = Preprocess::from_metadata(|k| meta.get(k).cloned())
        .map_err(|e| bad(format!("{e} (was it exported by moco-export?)")))?;

    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(bad(format!(
            "expected one input `image`, found {}",
            inputs.len()
        )));
    };
    let crop = preprocess.crop as i64;
    match dims(input) {
        Some(d)
            if input.name == "image"
                && d.len() == 4
                && d[1] == Some(3)
                && d[2].is_none_or(|h| h == crop)
                && d[3].is_none_or(|w| w == crop) => {}
        d => {
            return Err(bad(format!(
                "input `{}` has shape {d:?}; expected `image` [N,3,{crop},{crop}]",
                input.name
            )))
        }
    }
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    check_nodes(graph).map_err(bad)?;
    check_initializers(graph).map_err(bad)?;
    if let Some(o) = outputs.iter().find(|o| !produced(graph, o)) {
        return Err(bad(format!(
            "output `{o}` is produced by no node, input or initializer"
        )));
    }
    let logits = graph.output.iter().find(|o| o.name == "logits");
    let num_classes = match logits.and_then(dims) {
        Some(d) if d.len() == 2 => d[1].unwrap_or(0) as usize,
        Some(d) => {
            return Err(bad(format!(
                "output `logits` has rank {}, expected 2",
                d.len()
            )))
        }
        None => 0,
    };
    let classes: Vec<String> = match meta.get(META_CLASSES) {
        Some(j) => {
            serde_json::from_str(j).map_err(|e| bad(format!("metadata `{META_CLASSES}`: {e}")))?
        }
        None => (0..num_classes).map(|i| i.to_string()).collect(),
    };
    if logits.is_some() && classes.len() != num_classes {
        return Err(bad(format!(
            "{} class names in metadata for {num_classes} logits",
            classes.len()
        )));
    }
    Ok(ModelInfo {
        preprocess,
        classes,
        arch: meta.get(META_ARCH).cloned().unwrap_or_default(),
        outputs,
        num_classes,
        quantization: meta
            .get(models::preprocess::META_QUANTIZATION)
            .and_then(|v| serde_json::from_str(v).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_initializer_is_refused_before_tract_sees_it() {
        // Found by the onnx_model fuzzer: tract-onnx 0.23 panics ("raw tensor loading") on an
        // initializer of strings given as raw bytes.
        let bytes = include_bytes!("../../fuzz/corpus/onnx_model/regression-string-initializer");
        let e = parse_model_info(bytes, Path::new("m.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds STRING elements (data type 8)"), "{e}");
    }
}
