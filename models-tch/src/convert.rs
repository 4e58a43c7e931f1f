//! VarStore ↔ [`TensorMap`]: checkpoints go to disk through `models::weights` so the trainer and
//! the exporter share one reader and one writer.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use models::error::{ModelError, Result};
use models::layers::TensorSpec;
use models::weights::{DType, TensorData, TensorMap};

/// A tensor's values on the host: float kinds become f32, integer kinds i64.
pub fn tensor_to_data(t: &Tensor) -> TensorData {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t
        .detach()
        .to_device(Device::Cpu)
        .contiguous()
        .flatten(0, -1);
    if t.kind() == Kind::Double {
        let v = Vec::<f64>::try_from(flat).expect("f64 tensor to host");
        TensorData::from_f64(shape, &v)
    } else if t.is_floating_point() {
        let v = Vec::<f32>::try_from(flat.to_kind(Kind::Float)).expect("f32 tensor to host");
        TensorData::from_f32(shape, &v)
    } else {
        let v = Vec::<i64>::try_from(flat.to_kind(Kind::Int64)).expect("i64 tensor to host");
        TensorData::from_i64(shape, &v)
    }
}

pub fn data_to_tensor(d: &TensorData) -> Tensor {
    let shape: Vec<i64> = d.shape.iter().map(|&s| s as i64).collect();
    match d.dtype {
        DType::F32 => Tensor::from_slice(&d.to_f32()).reshape(&shape),
        DType::F64 => Tensor::from_slice(&d.to_f64()).reshape(&shape),
        DType::I64 => Tensor::from_slice(&d.to_i64()).reshape(&shape),
    }
}

/// The named variables whose names satisfy `keep`, as a map (e.g. the backbone without `fc.*`).
pub fn to_tensor_map(vars: &HashMap<String, Tensor>, keep: impl Fn(&str) -> bool) -> TensorMap {
    let mut map = TensorMap::new();
    for (name, t) in vars.iter().filter(|(n, _)| keep(n)) {
        map.insert(name.clone(), tensor_to_data(t));
    }
    map
}

/// Copies `map` into the variables named by `specs`, after checking names, shapes and values.
/// `file` names the source in errors.
pub fn load_into(
    vars: &HashMap<String, Tensor>,
    map: &TensorMap,
    specs: &[TensorSpec],
    file: &str,
    what: &str,
    allow_extra: impl Fn(&str) -> bool,
) -> Result<()> {
    map.check(specs, file, what, allow_extra)?;
    for s in specs {
        let var = vars.get(&s.name).ok_or_else(|| ModelError::MissingTensor {
            file: "(model)".into(),
            name: s.name.clone(),
        })?;
        let src = data_to_tensor(&map.tensors[&s.name]);
        tch::no_grad(|| {
            var.shallow_clone()
                .copy_(&src.to_device(var.device()).to_kind(var.kind()))
        });
    }
    // A torchvision file has no SplitBatchNorm groups: each starts from the loaded statistics.
    crate::batch_norm::reseed_group_stats(vars);
    Ok(())
}
