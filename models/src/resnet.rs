//! The ResNet backbone as data: torchvision's `ResNet` up to (not including) `fc`.
//!
//! Both lowerings walk this one description: `models_tch::ResNet` builds trainable modules
//! from it and the exporter emits ONNX nodes from it. Changing the architecture is an edit here.

use serde::Serialize;

use crate::arch::{Arch, BlockKind};
use crate::layers::{BatchNorm2d, Conv2d, ConvBn, TensorSpec};

/// torchvision's stem: conv 7×7/2 → BN → ReLU → max-pool 3×3/2 (padding 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stem {
    pub conv_bn: ConvBn,
    pub pool_kernel: usize,
    pub pool_stride: usize,
    pub pool_padding: usize,
}

/// The operations a lowering supplies; the description wires them ([`Block::lower`]), so the
/// residual rule is written once for the training modules and the ONNX graph alike. `name`s are
/// torchvision's module paths of the result (`layer1.0.relu1`, `layer1.0.add`, `layer1.0`).
pub trait Lowering {
    type Value;
    /// The same value under another handle (the identity shortcut).
    fn share(&self, x: &Self::Value) -> Self::Value;
    fn conv_bn(&mut self, unit: &ConvBn, x: &Self::Value) -> Self::Value;
    fn relu(&mut self, x: &Self::Value, name: &str) -> Self::Value;
    fn add(&mut self, a: &Self::Value, b: &Self::Value, name: &str) -> Self::Value;
}

/// A residual block: `relu(main(x) + shortcut(x))`, where `main` is the chain of `convs` with a
/// ReLU between consecutive units and `shortcut` is `downsample` or the identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Block {
    /// Parameter prefix, e.g. `layer2.0`.
    pub name: String,
    pub kind: BlockKind,
    pub convs: Vec<ConvBn>,
    /// `downsample.0` (1×1 conv) and `downsample.1` (BN) when the shape changes.
    pub downsample: Option<ConvBn>,
}

impl Block {
    /// torchvision's `BasicBlock`/`Bottleneck.forward`: the convs with a ReLU between
    /// consecutive units, the shortcut (downsample or identity) added, then a ReLU.
    pub fn lower<L: Lowering>(&self, l: &mut L, x: &L::Value) -> L::Value {
        let shortcut = match &self.downsample {
            Some(d) => l.conv_bn(d, x),
            None => l.share(x),
        };
        let last = self.convs.len() - 1;
        let mut y = l.share(x);
        for (i, unit) in self.convs.iter().enumerate() {
            y = l.conv_bn(unit, &y);
            if i != last {
                y = l.relu(&y, &format!("{}.relu{}", self.name, i + 1));
            }
        }
        let sum = l.add(&y, &shortcut, &format!("{}.add", self.name));
        l.relu(&sum, &self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// `layer1` .. `layer4`.
    pub name: String,
    pub blocks: Vec<Block>,
}

/// The backbone: stem, four stages, then global average pooling to `feature_dim` values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResNetDesc {
    pub arch: Arch,
    pub stem: Stem,
    pub stages: Vec<Stage>,
    pub feature_dim: usize,
}

fn conv_bn(
    prefix: &str,
    conv: &str,
    bn: &str,
    (cin, cout): (usize, usize),
    kernel: usize,
    stride: usize,
) -> ConvBn {
    ConvBn {
        conv: Conv2d {
            name: join(prefix, conv),
            in_channels: cin,
            out_channels: cout,
            kernel,
            stride,
            padding: kernel / 2,
        },
        bn: BatchNorm2d::new(join(prefix, bn), cout),
    }
}

fn join(prefix: &str, leaf: &str) -> String {
    if prefix.is_empty() {
        leaf.to_string()
    } else {
        format!("{prefix}.{leaf}")
    }
}

fn block(name: String, kind: BlockKind, inplanes: usize, planes: usize, stride: usize) -> Block {
    let out = planes * kind.expansion();
    let convs = match kind {
        BlockKind::Basic => vec![
            conv_bn(&name, "conv1", "bn1", (inplanes, planes), 3, stride),
            conv_bn(&name, "conv2", "bn2", (planes, planes), 3, 1),
        ],
        // torchvision v1.5: the stride sits on the 3×3 conv, not on the first 1×1.
        BlockKind::Bottleneck => vec![
            conv_bn(&name, "conv1", "bn1", (inplanes, planes), 1, 1),
            conv_bn(&name, "conv2", "bn2", (planes, planes), 3, stride),
            conv_bn(&name, "conv3", "bn3", (planes, out), 1, 1),
        ],
    };
    let downsample = (stride != 1 || inplanes != out).then(|| {
        conv_bn(
            &name,
            "downsample.0",
            "downsample.1",
            (inplanes, out),
            1,
            stride,
        )
    });
    Block {
        name,
        kind,
        convs,
        downsample,
    }
}

impl ResNetDesc {
    pub fn new(arch: Arch) -> Self {
        let kind = arch.block();
        let stem = Stem {
            conv_bn: ConvBn {
                conv: Conv2d {
                    name: "conv1".into(),
                    in_channels: 3,
                    out_channels: 64,
                    kernel: 7,
                    stride: 2,
                    padding: 3,
                },
                bn: BatchNorm2d::new("bn1".into(), 64),
            },
            pool_kernel: 3,
            pool_stride: 2,
            pool_padding: 1,
        };
        let mut inplanes = 64;
        let mut stages = Vec::with_capacity(4);
        for (i, (&planes, &n)) in [64, 128, 256, 512]
            .iter()
            .zip(arch.blocks_per_stage().iter())
            .enumerate()
        {
            let stage = format!("layer{}", i + 1);
            let stride = if i == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let s = if b == 0 { stride } else { 1 };
                blocks.push(block(format!("{stage}.{b}"), kind, inplanes, planes, s));
                inplanes = planes * kind.expansion();
            }
            stages.push(Stage {
                name: stage,
                blocks,
            });
        }
        ResNetDesc {
            arch,
            stem,
            stages,
            feature_dim: arch.feature_dim(),
        }
    }

    /// Every conv+BN unit in forward order (stem, then each block's main path and shortcut).
    pub fn conv_bns(&self) -> Vec<&ConvBn> {
        let mut out = vec![&self.stem.conv_bn];
        for block in self.stages.iter().flat_map(|s| &s.blocks) {
            out.extend(block.convs.iter());
            out.extend(block.downsample.iter());
        }
        out
    }

    pub fn conv_bns_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut out = vec![&mut self.stem.conv_bn];
        for block in self.stages.iter_mut().flat_map(|s| &mut s.blocks) {
            out.extend(block.convs.iter_mut());
            out.extend(block.downsample.iter_mut());
        }
        out
    }

    /// The tensors a checkpoint of this backbone holds: exactly torchvision's state_dict keys
    /// without `fc.*`.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        self.conv_bns().iter().flat_map(|u| u.tensors()).collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors()
            .iter()
            .filter(|t| t.role == crate::layers::TensorRole::Parameter)
            .map(|t| t.shape.iter().product::<usize>())
            .sum()
    }
}

impl ResNetDesc {
    /// The architecture of a backbone checkpoint: its `moco.arch` metadata when present, checked
    /// against the tensors it holds; otherwise read from the tensors alone (a torchvision
    /// state_dict saved without metadata).
    pub fn detect_arch(map: &crate::TensorMap, file: &str) -> crate::Result<Arch> {
        let has = |n: &str| map.tensors.contains_key(n);
        let by_structure = if has("layer1.0.conv3.weight") {
            Arch::Resnet50
        } else if has("layer3.5.conv1.weight") {
            Arch::Resnet34
        } else {
            Arch::Resnet18
        };
        match map.metadata.get(crate::preprocess::META_ARCH) {
            Some(named) => {
                let named: Arch = named.parse()?;
                if named != by_structure {
                    return Err(crate::ModelError::ArchMismatch {
                        file: file.into(),
                        named: named.to_string(),
                        found: by_structure.to_string(),
                    });
                }
                Ok(named)
            }
            None => Ok(by_structure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_torchvision() {
        // sum(p.numel() for p in resnetXX().parameters()) minus fc (512*exp*1000 + 1000).
        assert_eq!(
            ResNetDesc::new(Arch::Resnet18).parameter_count(),
            11_689_512 - 513_000
        );
        assert_eq!(
            ResNetDesc::new(Arch::Resnet34).parameter_count(),
            21_797_672 - 513_000
        );
        assert_eq!(
            ResNetDesc::new(Arch::Resnet50).parameter_count(),
            25_557_032 - 2_049_000
        );
    }

    #[test]
    fn names_follow_torchvision() {
        let d = ResNetDesc::new(Arch::Resnet50);
        let names: Vec<String> = d.tensors().into_iter().map(|t| t.name).collect();
        assert_eq!(names[0], "conv1.weight");
        assert!(names.contains(&"layer1.0.downsample.0.weight".to_string()));
        assert!(names.contains(&"layer4.2.bn3.num_batches_tracked".to_string()));
        // torchvision v1.5: the stride of layer2.0 is on conv2 (3×3), not conv1 (1×1).
        let b = &d.stages[1].blocks[0];
        assert_eq!((b.convs[0].conv.stride, b.convs[1].conv.stride), (1, 2));
        // 53 convolutions (1 stem + 16 blocks × 3 + 4 shortcuts), each with a BN of 5 entries.
        assert_eq!(names.len(), 53 * 6);
    }

    #[test]
    fn arch_is_detected_from_tensors_and_checked_against_metadata() {
        use crate::{TensorData, TensorMap};
        for arch in Arch::ALL {
            let mut m = TensorMap::new();
            for t in ResNetDesc::new(arch).tensors() {
                m.insert(t.name, TensorData::from_f32(vec![], &[0.0]));
            }
            assert_eq!(ResNetDesc::detect_arch(&m, "f").unwrap(), arch);
            m.metadata.insert("moco.arch".into(), "resnet50".into());
            let r = ResNetDesc::detect_arch(&m, "f");
            assert_eq!(r.is_ok(), arch == Arch::Resnet50, "{r:?}");
        }
    }
}
