//! Loading a pretrained backbone (`encoder.safetensors`, torchvision names) into tch modules, or
//! a random-init one for the floor that pretraining must beat.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use models::{Arch, ResNetDesc, TensorMap};
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
    /// Reads `path`, detects the arch from its tensors, checks every name and shape; pretraining
    /// heads (`fc.*`, `predictor.*`) in the file are ignored.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let file = path.display().to_string();
        // The error names the file already.
        let mut map = TensorMap::load(path).context("--encoder")?;
        // A pretraining checkpoint (`RUN/checkpoints/step-*.safetensors`) holds the query encoder
        // under `q/`: evaluate it as it stands, mid-run.
        if map.tensors.contains_key("q/conv1.weight") {
            map.tensors = std::mem::take(&mut map.tensors)
                .into_iter()
                .filter_map(|(n, t)| n.strip_prefix("q/").map(|n| (n.to_string(), t)))
                .collect();
        }
        let arch = ResNetDesc::detect_arch(&map, &file)?;
        let desc = ResNetDesc::new(arch);
        let vs = VarStore::new(device);
        let net = ResNet::new(&vs.root(), &desc, 1);
        load_into(
            &vs.variables(),
            &map,
            &desc.tensors(),
            &file,
            "encoder",
            crate::methods::parts::is_head,
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
    /// `RUN/encoder.safetensors` or a pretraining checkpoint.
    Pretrained(PathBuf),
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
            EncoderSource::Pretrained(p) => Some(p),
            EncoderSource::RandomInit { .. } => None,
        }
    }
}
