//! Deterministic random checkpoints without libtorch, for tests and examples of the libtorch-free
//! crates (exporter, infer). Conv weights follow torchvision's kaiming-normal (fan_out) scale;
//! BN statistics are chosen so activations stay of order one in eval mode.

use crate::layers::TensorRole;
use crate::weights::{TensorData, TensorMap};
use crate::{Classifier, ResNetDesc};

/// SplitMix64 → uniform / normal samples; enough for test weights, no dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

pub fn random_backbone(desc: &ResNetDesc, seed: u64) -> TensorMap {
    let mut rng = Rng(seed);
    let mut map = TensorMap::new();
    for t in desc.tensors() {
        let n: usize = t.shape.iter().product();
        let leaf = t.name.rsplit('.').next().unwrap_or_default();
        let values: Vec<f32> = match (t.role, leaf) {
            (TensorRole::Counter, _) => {
                map.insert(t.name.clone(), TensorData::from_i64(vec![], &[0]));
                continue;
            }
            (TensorRole::Parameter, "weight") if t.shape.len() == 4 => {
                let fan_out = (t.shape[0] * t.shape[2] * t.shape[3]) as f64;
                let std = (2.0 / fan_out).sqrt();
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            }
            (TensorRole::Parameter, "weight") => {
                (0..n).map(|_| (0.2 + 0.2 * rng.uniform()) as f32).collect()
            }
            (TensorRole::Parameter, _) => (0..n).map(|_| (0.1 * rng.normal()) as f32).collect(),
            (TensorRole::Buffer, "running_mean") => {
                (0..n).map(|_| (0.1 * rng.normal()) as f32).collect()
            }
            (TensorRole::Buffer, _) => (0..n).map(|_| (0.5 + rng.uniform()) as f32).collect(),
        };
        map.insert(t.name, TensorData::from_f32(t.shape, &values));
    }
    map.metadata
        .insert(crate::preprocess::META_ARCH.into(), desc.arch.name().into());
    map
}

pub fn random_classifier(head: &Classifier, seed: u64) -> TensorMap {
    let mut rng = Rng(seed ^ 0xC1A5);
    let mut map = TensorMap::new();
    let (o, i) = (head.fc.out_features, head.fc.in_features);
    let bound = 1.0 / (i as f64).sqrt();
    let w: Vec<f32> = (0..o * i)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
        .collect();
    let b: Vec<f32> = (0..o)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
        .collect();
    map.insert("fc.weight", TensorData::from_f32(vec![o, i], &w));
    map.insert("fc.bias", TensorData::from_f32(vec![o], &b));
    map
}
