//! The Rust side of the torchvision parity check (tests/python/torchvision_parity.py writes the
//! other side): the same weights and inputs through `models_tch`, compared quantity by
//! quantity. Shared by the integration test and the `moco-parity` binary (used on the GPU).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use models::{Arch, Classifier, ResNetDesc, TensorMap, TensorRole};
use models_tch::{convert::data_to_tensor, load_into, ClassifierModule, ResNet};
use tch::{nn::VarStore, Device, Tensor};

use crate::compare::{check, check_abs, Check};

/// Outputs, within torchvision's: fp32 on the CPU, where convolutions sum in another order.
pub const OUTPUT_TOL: f64 = 1e-4;
/// Running statistics: tighter, so that a wrong BN momentum cannot hide in the tolerance.
pub const STATS_TOL: f64 = 1e-5;

pub struct ResnetReference {
    pub dir: PathBuf,
    pub arch: Arch,
    pub splits: i64,
    encoder: TensorMap,
    classifier: TensorMap,
    reference: HashMap<String, Tensor>,
}

impl ResnetReference {
    /// Runs the Python reference into `dir` (created if needed) and loads it.
    pub fn generate(arch: Arch, dir: &Path, seed: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::python::run_script(
            "torchvision_parity.py",
            &[
                "--arch",
                arch.name(),
                "--out",
                &dir.to_string_lossy(),
                "--seed",
                &seed.to_string(),
            ],
        )?;
        Self::load(dir)
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let read = |f: &str| TensorMap::load(&dir.join(f)).map_err(anyhow::Error::from);
        let refs = read("reference.safetensors")?;
        let arch: Arch = refs
            .metadata
            .get("arch")
            .context("reference.safetensors: no `arch` metadata")?
            .parse()?;
        let splits = refs
            .metadata
            .get("splits")
            .and_then(|s| s.parse().ok())
            .unwrap_or(2);
        Ok(ResnetReference {
            dir: dir.to_path_buf(),
            arch,
            splits,
            encoder: read("encoder.safetensors")?,
            classifier: read("classifier.safetensors")?,
            reference: refs
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), data_to_tensor(v)))
                .collect(),
        })
    }

    fn r(&self, key: &str) -> Result<&Tensor> {
        self.reference
            .get(key)
            .with_context(|| format!("{}: no `{key}` in reference", self.dir.display()))
    }

    fn build(
        &self,
        desc: &ResNetDesc,
        device: Device,
        splits: i64,
    ) -> Result<(VarStore, ResNet, ClassifierModule)> {
        let vs = VarStore::new(device);
        let net = ResNet::new(&vs.root(), desc, splits);
        let classes = self.classifier.get("fc.bias").context("no fc.bias")?.shape[0];
        let head = Classifier::new(desc.feature_dim, classes);
        let cls = ClassifierModule::new(&vs.root(), &head);
        let vars = vs.variables();
        load_into(
            &vars,
            &self.encoder,
            &desc.tensors(),
            "encoder.safetensors",
            desc.arch.name(),
            |_| false,
        )?;
        load_into(
            &vars,
            &self.classifier,
            &head.tensors(),
            "classifier.safetensors",
            "classifier",
            |_| false,
        )?;
        Ok((vs, net, cls))
    }

    fn bn_checks(&self, vs: &VarStore, desc: &ResNetDesc, prefix: &str) -> Result<Vec<Check>> {
        let vars = vs.variables();
        let mut out = Vec::new();
        for spec in desc.tensors() {
            if spec.role == TensorRole::Parameter {
                continue;
            }
            let key = format!("{prefix}.{}", spec.name);
            let tol = if spec.role == TensorRole::Counter {
                0.0
            } else {
                STATS_TOL
            };
            out.push(check_abs(&key, &vars[&spec.name], self.r(&key)?, tol));
        }
        Ok(out)
    }

    /// Every comparison for `desc` (normally `ResNetDesc::new(self.arch)`; tests pass mutants).
    pub fn run(&self, desc: &ResNetDesc, device: Device) -> Result<Vec<Check>> {
        let mut checks = Vec::new();
        let input = |k: &str| -> Result<Tensor> { Ok(self.r(k)?.to_device(device)) };

        // Eval mode: running statistics, two input sizes.
        let (_vs, net, cls) = self.build(desc, device, 1)?;
        tch::no_grad(|| -> Result<()> {
            let f = net.forward_t(&input("input.a")?, false);
            checks.push(check_abs(
                "eval.a.features",
                &f,
                self.r("eval.a.features")?,
                OUTPUT_TOL,
            ));
            let l = cls.forward(&f);
            checks.push(check_abs(
                "eval.a.logits",
                &l,
                self.r("eval.a.logits")?,
                OUTPUT_TOL,
            ));
            let f = net.forward_t(&input("input.b")?, false);
            checks.push(check_abs(
                "eval.b.features",
                &f,
                self.r("eval.b.features")?,
                OUTPUT_TOL,
            ));
            Ok(())
        })?;

        // Train mode: batch statistics, gradients, running-statistics update.
        let (vs, net, cls) = self.build(desc, device, 1)?;
        let f = net.forward_t(&input("input.a")?, true);
        let l = cls.forward(&f);
        checks.push(check_abs(
            "train.a.features",
            &f,
            self.r("train.a.features")?,
            OUTPUT_TOL,
        ));
        checks.push(check_abs(
            "train.a.logits",
            &l,
            self.r("train.a.logits")?,
            OUTPUT_TOL,
        ));
        (&l * input("train.a.dlogits")?)
            .sum(tch::Kind::Float)
            .backward();
        let vars = vs.variables();
        let head = Classifier::new(desc.feature_dim, l.size()[1] as usize);
        for spec in desc.tensors().into_iter().chain(head.tensors()) {
            if spec.role == TensorRole::Parameter {
                let key = format!("train.a.grad.{}", spec.name);
                checks.push(check(
                    &key,
                    &vars[&spec.name].grad(),
                    self.r(&key)?,
                    OUTPUT_TOL,
                ));
            }
        }
        checks.extend(self.bn_checks(&vs, desc, "train.a.after")?);

        // MoCo's SplitBatchNorm (shuffle BN on one device).
        let (vs, net, cls) = self.build(desc, device, self.splits)?;
        let f = net.forward_t(&input("input.a")?, true);
        checks.push(check_abs(
            "split.a.features",
            &f,
            self.r("split.a.features")?,
            OUTPUT_TOL,
        ));
        let l = cls.forward(&f);
        checks.push(check_abs(
            "split.a.logits",
            &l,
            self.r("split.a.logits")?,
            OUTPUT_TOL,
        ));
        // The split statistics live in per-group buffers; like a save, a read syncs them first.
        models_tch::batch_norm::sync_group_stats(&vs.variables());
        checks.extend(self.bn_checks(&vs, desc, "split.a.after")?);
        Ok(checks)
    }
}

/// Plausible bugs, as edits of the description. Each must make [`ResnetReference::run`] fail:
/// this is what shows the comparison can catch a real mistake.
pub fn mutants(arch: Arch) -> Vec<(&'static str, ResNetDesc)> {
    let base = ResNetDesc::new(arch);
    let mut out = Vec::new();

    let mut d = base.clone();
    for stage in d.stages.iter_mut().skip(1) {
        let convs = &mut stage.blocks[0].convs;
        let last = convs.len() - 1;
        // v1 placement for bottlenecks (stride on the first 1×1); for basic blocks, the 2nd conv.
        let (from, to) = if convs.len() == 3 { (1, 0) } else { (0, last) };
        convs[to].conv.stride = convs[from].conv.stride;
        convs[from].conv.stride = 1;
    }
    out.push(("stride on the wrong conv of the first block", d));

    let mut d = base.clone();
    d.conv_bns_mut().into_iter().for_each(|u| u.bn.eps = 1e-3);
    out.push(("BatchNorm eps 1e-3 instead of 1e-5", d));

    let mut d = base.clone();
    d.conv_bns_mut()
        .into_iter()
        .for_each(|u| u.bn.momentum = 0.01);
    out.push(("BatchNorm momentum 0.01 instead of 0.1", d));

    let mut d = base;
    d.stem.pool_padding = 0;
    out.push(("stem max-pool without padding", d));
    out
}
