//! Loading a pretrained backbone (`encoder.safetensors`, torchvision names) into tch modules, or
//! a random-init one for the floor that pretraining must beat.

use std::path::Path;

use anyhow::{bail, Context, Result};
use models::{Arch, EncoderFile, ResNetDesc};
use models_tch::{load_into, ResNet};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::Device;

pub struct Backbone {
    pub vs: VarStore,
    pub net: ResNet,
    pub arch: Arch,
}

impl Backbone {
    /// Reads the file, detects the arch from its tensors, checks every name and shape; pretraining
    /// heads (`fc.*`, `predictor.*`) in the file are ignored. A pretraining checkpoint
    /// (`RUN/checkpoints/step-*.safetensors`) is evaluated as it stands, mid-run: its query
    /// encoder (`q/`) is found like a PyTorch file's `module.encoder_q.`.
    pub fn load(source: &EncoderFile, device: Device) -> Result<Self> {
        let file = source.path.display().to_string();
        // The error names the file already.
        let map = source.load().context("--encoder")?;
        let arch = ResNetDesc::detect_arch(&map, &file)?;
        if let Some(expected) = source.arch.filter(|&a| a != arch) {
            bail!("--arch {expected}: {file} holds a {arch} backbone");
        }
        let desc = ResNetDesc::new(arch);
        let vs = VarStore::new(device);
        let net = ResNet::new(&vs.root(), &desc, 1);
        load_into(
            &vs.variables(),
            &map,
            &desc.tensors(),
            &file,
            "encoder",
            is_head,
        )?;
        Ok(Backbone { vs, net, arch })
    }

    /// torchvision's initialisation drawn from `seed`.
    pub fn random(arch: Arch, seed: u64, device: Device) -> Self {
        tch::manual_seed(seed as i64);
        let vs = VarStore::new(device);
        let net = ResNet::new(&vs.root(), &ResNetDesc::new(arch), 1);
        Backbone { vs, net, arch }
    }
}

/// Which backbone a command evaluates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderSource {
    /// `RUN/encoder.safetensors`, a pretraining checkpoint, or a PyTorch file.
    Pretrained(EncoderFile),
    /// torchvision's initialisation drawn from `seed`: the floor that pretraining must beat.
    RandomInit { arch: Arch, seed: u64 },
}

impl EncoderSource {
    pub fn load(&self, device: Device) -> Result<Backbone> {
        match self {
            EncoderSource::Pretrained(p) => Backbone::load(p, device),
            EncoderSource::RandomInit { arch, seed } => Ok(Backbone::random(*arch, *seed, device)),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            EncoderSource::Pretrained(f) => Some(&f.path),
            EncoderSource::RandomInit { .. } => None,
        }
    }
}

/// Variables of the heads rather than of the backbone.
pub fn is_head(name: &str) -> bool {
    name.starts_with("fc.") || name.starts_with("predictor.")
}
