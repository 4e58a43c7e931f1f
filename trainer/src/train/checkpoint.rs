//! Checkpoints: everything an exact resume needs in one safetensors file — the method's networks
//! with their BN buffers and its other state (a queue and its pointer), the optimizer's momentum
//! buffers, the step, the loss scale and the run's algorithm record — with a SHA-256 of the
//! contents in the metadata. Written atomically
//! (temp file, fsync, rename); a torn or corrupt file is detected on load and the previous good
//! one is used instead. Random draws are keyed by (seed, step) (`crate::runtime::rng`), so no RNG state
//! needs saving.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use models::TensorMap;
use models_tch::convert::{data_to_tensor, tensor_to_data};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Algorithm;
use crate::methods::Method;
use crate::nn::optim::{LossScaler, Optimizer};
use models_tch::batch_norm::GROUPS;

const STATE_KEY: &str = "moco.state";
const SHA_KEY: &str = "moco.sha256";
/// How many checkpoints stay on disk: the newest, and one to fall back to.
const KEEP: usize = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Steps completed.
    pub step: u64,
    /// The queue pointer of checkpoints written before it was a tensor (`queue_ptr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptr: Option<i64>,
    pub scaler: Option<LossScaler>,
    /// The algorithm part of config.json (`config::Algorithm`): a resume with different values
    /// is refused. Kept as stored, so that records of older versions can be read and translated.
    pub config: serde_json::Value,
    /// Ranks that wrote it: a resume must use as many (the data shards depend on it).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn digest(map: &TensorMap) -> String {
    let mut h = Sha256::new();
    for (name, t) in &map.tensors {
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype, t.shape).as_bytes());
        h.update(&t.bytes);
    }
    for (k, v) in map.metadata.iter().filter(|(k, _)| *k != SHA_KEY) {
        h.update(k.as_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

pub fn file_for(run: &Path, step: u64) -> PathBuf {
    dir(run).join(format!("step-{step:09}.safetensors"))
}

pub fn save(run: &Path, method: &dyn Method, opt: &Optimizer, state: &State) -> Result<PathBuf> {
    let d = dir(run);
    fs::create_dir_all(&d).with_context(|| format!("{}: cannot create", d.display()))?;
    let path = file_for(run, state.step);
    write(&path, method, Some(opt), state)?;
    prune(run)?;
    Ok(path)
}

/// `--save-init`: the method's state as drawn (networks, queue) in the checkpoint format, no
/// optimizer buffers, so that runs on other devices or in other precisions can start from it
/// (`--init-from`). Returns the file's checksum.
pub fn save_init(path: &Path, method: &dyn Method, state: &State) -> Result<String> {
    write(path, method, None, state)
}

/// One checkpoint file, written atomically; returns its checksum.
fn write(
    path: &Path,
    method: &dyn Method,
    opt: Option<&Optimizer>,
    state: &State,
) -> Result<String> {
    let mut map = TensorMap::new();
    for (name, t) in method.networks().into_iter().chain(method.extra_state()) {
        map.insert(name, tensor_to_data(&t));
    }
    for (name, b) in opt.into_iter().flat_map(Optimizer::named_buffers) {
        map.insert(format!("opt/{name}"), tensor_to_data(b));
    }
    map.metadata
        .insert(STATE_KEY.into(), serde_json::to_string(state)?);
    let sha = sign(&mut map);
    map.save_with(path, |stage| {
        crate::runtime::faults::at_checkpoint_stage(stage, state.step)
    })?;
    Ok(sha)
}

/// Seals a checkpoint's tensors and state with their checksum; returns it. Public so that tests
/// can edit a checkpoint as a user with a text editor and a hex editor could.
pub fn sign(map: &mut TensorMap) -> String {
    let sha = digest(map);
    map.metadata.insert(SHA_KEY.into(), sha.clone());
    sha
}

/// Checkpoint files of a run, newest first.
pub fn list(run: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir(run))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.reverse();
    files
}

fn prune(run: &Path) -> Result<()> {
    for old in list(run).into_iter().skip(KEEP) {
        fs::remove_file(&old).with_context(|| format!("{}: cannot remove", old.display()))?;
    }
    Ok(())
}

/// Reads and verifies one checkpoint file.
pub fn read(path: &Path) -> Result<(TensorMap, State)> {
    let map = TensorMap::load(path)?;
    let sha = map
        .metadata
        .get(SHA_KEY)
        .with_context(|| format!("{}: no checksum (not a moco-rs checkpoint)", path.display()))?;
    if *sha != digest(&map) {
        bail!("{}: checksum mismatch (corrupt checkpoint)", path.display());
    }
    let state: State = serde_json::from_str(
        map.metadata
            .get(STATE_KEY)
            .with_context(|| format!("{}: no state", path.display()))?,
    )
    .with_context(|| format!("{}: unreadable state", path.display()))?;
    Ok((map, state))
}

/// The newest checkpoint that reads and verifies; corrupt ones are reported and skipped. Temp
/// files of a writer that was killed are removed first.
pub fn latest_good(run: &Path) -> Option<(PathBuf, TensorMap, State)> {
    atomic_io::remove_stale_temps(&dir(run));
    for path in list(run) {
        match read(&path) {
            Ok((map, state)) => return Some((path, map, state)),
            Err(e) => eprintln!("warning: {e:#}; falling back to an older checkpoint"),
        }
    }
    None
}

impl State {
    /// The stored algorithm record, typed.
    pub fn algorithm(&self) -> Result<Algorithm> {
        Algorithm::from_stored(&self.config)
    }
}

/// Restores `method` and `opt` from a verified checkpoint.
pub fn restore(
    path: &Path,
    map: &TensorMap,
    state: &State,
    method: &mut dyn Method,
    opt: &mut Optimizer,
) -> Result<()> {
    restore_method(path, map, state, method)?;
    for ((name, p), buf) in opt.params.iter().zip(opt.buffers.iter_mut()) {
        *buf = map
            .get(&format!("opt/{name}"))
            .map(|d| data_to_tensor(d).to_device(p.device()).to_kind(p.kind()));
    }
    Ok(())
}

/// The method's networks and state from a verified checkpoint, in the method's own device and
/// precision.
fn restore_method(
    path: &Path,
    map: &TensorMap,
    state: &State,
    method: &mut dyn Method,
) -> Result<()> {
    let vars: Vec<(String, tch::Tensor)> = method
        .networks()
        .into_iter()
        .chain(method.extra_state())
        .collect();
    // SplitBatchNorm groups the file does not hold as this run has them (written before the
    // groups were kept, or by another number of groups per rank) start from their mean.
    let held = |name: &str, var: &tch::Tensor| {
        map.get(name)
            .is_some_and(|d| d.shape.iter().map(|&x| x as i64).eq(var.size()))
    };
    for (name, var) in &vars {
        if name.ends_with(GROUPS) && !held(name, var) {
            continue;
        }
        let src = match (map.get(name), name.as_str(), state.ptr) {
            (Some(d), _, _) => data_to_tensor(d),
            (None, "queue_ptr", Some(ptr)) => tch::Tensor::from(ptr),
            (None, _, _) => bail!("{}: missing `{name}`", path.display()),
        };
        if name == "queue_ptr" {
            check_queue_ptr(path, &src, &vars)?;
        }
        if src.size() != var.size() {
            bail!(
                "{}: `{name}` of shape {:?}, the run has {:?}",
                path.display(),
                src.size(),
                var.size()
            );
        }
        tch::no_grad(|| {
            var.shallow_clone()
                .copy_(&src.to_device(var.device()).to_kind(var.kind()))
        });
    }
    let unheld: std::collections::HashMap<String, tch::Tensor> = vars
        .into_iter()
        .filter(|(n, t)| !n.ends_with(GROUPS) || !held(n, t))
        .collect();
    models_tch::batch_norm::reseed_group_stats(&unheld);
    Ok(())
}

/// A queue position inside the queue (a hand-edited one would index past it at the next step).
fn check_queue_ptr(path: &Path, ptr: &tch::Tensor, vars: &[(String, tch::Tensor)]) -> Result<()> {
    let size = vars
        .iter()
        .find(|(n, _)| n == "queue")
        .map_or(0, |(_, q)| q.size().last().copied().unwrap_or(0));
    let at = (ptr.numel() == 1).then(|| ptr.int64_value(&[]));
    match at {
        Some(p) if (0..size).contains(&p) => Ok(()),
        _ => bail!(
            "{}: `queue_ptr` {} is not a position in the queue of {size} keys",
            path.display(),
            at.map_or_else(|| format!("{:?}", ptr.size()), |p| p.to_string())
        ),
    }
}

/// `--init-from`: the method's networks and state (a queue) from a `--save-init` file or any
/// checkpoint of a run of the same method and architecture; the optimizer starts empty. Returns
/// the file's checksum, which the run's record keeps.
pub fn load_init(path: &Path, method: &mut dyn Method, algo: &Algorithm) -> Result<String> {
    let (map, state) = read(path).with_context(|| "--init-from".to_string())?;
    // The state's shapes are checked tensor by tensor; these two name the mismatch first.
    let stored = |k: &str| state.config.pointer(k).cloned().unwrap_or_default();
    let want = serde_json::to_value(algo)?;
    for k in ["/method/name", "/arch"] {
        if stored(k) != want.pointer(k).cloned().unwrap_or_default() {
            bail!(
                "--init-from {}: written for {} {}, this run is {}",
                path.display(),
                &k[1..],
                stored(k),
                want.pointer(k).cloned().unwrap_or_default()
            );
        }
    }
    restore_method(path, &map, &state, method)?;
    Ok(map.metadata.get(SHA_KEY).cloned().unwrap_or_default())
}
