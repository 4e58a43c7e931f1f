//! `--encoder`: a backbone's weights as people have them — this project's safetensors, or a
//! PyTorch file (MoCo's `checkpoint_NNNN.pth.tar`, a torchvision `state_dict`, a Lightning
//! `.ckpt`) — read into torchvision names, with the backbone found under its prefix.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::torch_save::{self, Archive, FileKind, TensorRef, Value};
use crate::weights::TensorMap;

/// Where a file's state_dict may sit when the file holds more than the state_dict: MoCo's and
/// Lightning's `state_dict`, DeiT's and MAE's `model`.
const STATE_DICT_KEYS: [&str; 4] = ["state_dict", "model", "model_state_dict", "module"];

/// Path components that name a copy of the backbone other than the one to evaluate: the
/// momentum (key, target, teacher, EMA) copy, or an optimizer's buffers shaped like it (this
/// project's pretraining checkpoints hold `q/`, `k/` and `opt/`). The last three match inside a
/// component too (`backbone_momentum`, `target_encoder`).
const MOMENTUM_NAMES: [&str; 10] = [
    "k",
    "key",
    "encoder_k",
    "ema",
    "model_ema",
    "opt",
    "optimizer",
    "momentum",
    "target",
    "teacher",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderFile {
    pub path: PathBuf,
    /// The backbone's prefix in the file's tensor names (`module.encoder_q.`); None: detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The architecture the user says the file holds (`--arch`): checked where the backbone is
    /// built from it. None: whatever the file holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<crate::Arch>,
}

impl EncoderFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EncoderFile {
            path: path.into(),
            prefix: None,
            arch: None,
        }
    }

    pub fn with_prefix(path: impl Into<PathBuf>, prefix: Option<String>) -> Self {
        EncoderFile {
            path: path.into(),
            prefix,
            arch: None,
        }
    }

    /// The same file, expected to hold `arch` (None: no expectation).
    pub fn expecting(self, arch: Option<crate::Arch>) -> Self {
        EncoderFile { arch, ..self }
    }

    /// The backbone's tensors under torchvision names (heads such as `fc.*` included: the
    /// callers' checks decide what they ignore); the file's metadata kept.
    pub fn load(&self) -> Result<TensorMap> {
        let fail = |message: String| ModelError::Checkpoint {
            path: self.path.clone(),
            message,
        };
        match torch_save::sniff(&head(&self.path)?) {
            FileKind::Safetensors | FileKind::Unknown => {
                let mut map = TensorMap::load(&self.path)?;
                let names: Vec<&str> = map.tensors.keys().map(String::as_str).collect();
                let (prefix, others) =
                    backbone_prefix(&names, self.prefix.as_deref()).map_err(fail)?;
                map.tensors = std::mem::take(&mut map.tensors)
                    .into_iter()
                    .filter(|(n, _)| !n.ends_with(crate::SPLIT_GROUPS_SUFFIX))
                    .filter_map(|(n, t)| strip(&n, &prefix, &others).map(|n| (n, t)))
                    .collect();
                Ok(map)
            }
            FileKind::TorchZip => self.load_torch().map_err(fail),
            FileKind::TorchLegacy => Err(fail(torch_save::LEGACY_MESSAGE.into())),
        }
    }

    fn load_torch(&self) -> std::result::Result<TensorMap, String> {
        let file = File::open(&self.path).map_err(|e| e.to_string())?;
        let mut archive = Archive::open(BufReader::new(file))?;
        let tensors = state_dict_of(&archive.root)?;
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        let (prefix, others) = backbone_prefix(&names, self.prefix.as_deref())?;
        let mut map = TensorMap::new();
        for (name, t) in &tensors {
            if let Some(short) = strip(name, &prefix, &others) {
                let data = archive
                    .tensor(t)
                    .map_err(|e| format!("tensor `{name}`: {e}"))?;
                map.insert(short, data);
            }
        }
        Ok(map)
    }
}

fn head(path: &Path) -> Result<Vec<u8>> {
    let io = |error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut head = Vec::with_capacity(16);
    File::open(path)
        .map_err(io)?
        .take(16)
        .read_to_end(&mut head)
        .map_err(io)?;
    Ok(head)
}

/// The tensors of the saved object's state_dict: the object itself when it is one, else the
/// dict under one of [`STATE_DICT_KEYS`].
fn state_dict_of(root: &Value) -> std::result::Result<Vec<(String, TensorRef)>, String> {
    let items = root
        .str_items()
        .ok_or_else(|| format!("holds a {}, not a dict of tensors", root.kind()))?;
    let tensors = |items: &[(String, Value)]| -> Vec<(String, TensorRef)> {
        items
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Tensor(t) => Some((k.clone(), t.clone())),
                _ => None,
            })
            .collect()
    };
    let top = tensors(&items);
    if !top.is_empty() {
        return Ok(top);
    }
    for key in STATE_DICT_KEYS {
        let inner = items.iter().find(|(k, _)| k == key);
        if let Some(inner) = inner.and_then(|(_, v)| v.str_items()) {
            let found = tensors(&inner);
            if !found.is_empty() {
                return Ok(found);
            }
        }
    }
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    Err(format!(
        "no state_dict found: the saved dict's keys are {keys:?} (looked for tensors at the top \
         and under {STATE_DICT_KEYS:?})"
    ))
}

/// Every prefix under which the names hold a ResNet (`P` + `conv1.weight` and
/// `P` + `layer1.0.conv1.weight`).
fn candidates(names: &[&str]) -> Vec<String> {
    let set: BTreeSet<&str> = names.iter().copied().collect();
    names
        .iter()
        .filter_map(|n| n.strip_suffix("conv1.weight"))
        .filter(|p| p.is_empty() || p.ends_with('.') || p.ends_with('/'))
        .filter(|p| set.contains(format!("{p}layer1.0.conv1.weight").as_str()))
        .map(str::to_string)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn is_momentum_copy(prefix: &str) -> bool {
    prefix
        .split(['.', '/'])
        .any(|c| MOMENTUM_NAMES.contains(&c) || MOMENTUM_NAMES[7..].iter().any(|m| c.contains(m)))
}

/// The backbone's prefix (given, or the one detected) and the other backbones' prefixes, whose
/// tensors are left out.
fn backbone_prefix(
    names: &[&str],
    wanted: Option<&str>,
) -> std::result::Result<(String, Vec<String>), String> {
    let found = candidates(names);
    let listed = || {
        if found.is_empty() {
            "none".to_string()
        } else {
            found
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let chosen = match wanted {
        Some(p) => {
            let p = if p.is_empty() || p.ends_with('.') || p.ends_with('/') {
                p.to_string()
            } else {
                format!("{p}.")
            };
            if !found.contains(&p) {
                return Err(format!(
                    "--encoder-prefix `{p}`: no ResNet under it (`{p}conv1.weight`); \
                     backbones found under: {}",
                    listed()
                ));
            }
            p
        }
        None => match found.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            _ => {
                let online: Vec<&String> = found.iter().filter(|p| !is_momentum_copy(p)).collect();
                match online.as_slice() {
                    [one] => (*one).clone(),
                    _ => {
                        return Err(format!(
                            "holds several backbones (under {}): choose one with --encoder-prefix",
                            listed()
                        ))
                    }
                }
            }
        },
    };
    let others = found.into_iter().filter(|p| *p != chosen).collect();
    Ok((chosen, others))
}

/// The name under torchvision's naming, or None for a tensor outside the chosen backbone.
fn strip(name: &str, prefix: &str, others: &[String]) -> Option<String> {
    let short = name.strip_prefix(prefix)?;
    // With an empty prefix every name matches: the other backbones' are still left out.
    if prefix.is_empty() && others.iter().any(|o| name.starts_with(o.as_str())) {
        return None;
    }
    Some(short.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resnet(prefix: &str) -> Vec<String> {
        ["conv1.weight", "layer1.0.conv1.weight", "fc.weight"]
            .iter()
            .map(|n| format!("{prefix}{n}"))
            .collect()
    }

    fn pick(prefixes: &[&str], wanted: Option<&str>) -> std::result::Result<String, String> {
        let names: Vec<String> = prefixes.iter().flat_map(|p| resnet(p)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        backbone_prefix(&names, wanted).map(|(p, _)| p)
    }

    #[test]
    fn the_query_encoder_is_chosen_over_its_momentum_copy() {
        assert_eq!(
            pick(&["module.encoder_q.", "module.encoder_k."], None).unwrap(),
            "module.encoder_q."
        );
        assert_eq!(pick(&["q/", "k/", "opt/"], None).unwrap(), "q/");
        assert_eq!(
            pick(&["backbone.", "backbone_momentum."], None).unwrap(),
            "backbone."
        );
        assert_eq!(pick(&["student.", "teacher."], None).unwrap(), "student.");
        assert_eq!(pick(&[""], None).unwrap(), "");
        assert_eq!(pick(&["module."], None).unwrap(), "module.");
    }

    #[test]
    fn two_backbones_of_equal_standing_need_the_prefix_flag() {
        let e = pick(&["a.", "b."], None).unwrap_err();
        assert!(
            e.contains("`a.`, `b.`") && e.contains("--encoder-prefix"),
            "{e}"
        );
        assert_eq!(pick(&["a.", "b."], Some("b")).unwrap(), "b.");
        let e = pick(&["a."], Some("c.")).unwrap_err();
        assert!(e.contains("`c.`") && e.contains("`a.`"), "{e}");
    }

    #[test]
    fn with_no_prefix_the_other_backbones_are_left_out() {
        let others = vec!["ema.".to_string()];
        assert_eq!(
            strip("conv1.weight", "", &others).as_deref(),
            Some("conv1.weight")
        );
        assert_eq!(strip("ema.conv1.weight", "", &others), None);
        assert_eq!(
            strip("q/fc.0.weight", "q/", &[]).as_deref(),
            Some("fc.0.weight")
        );
        assert_eq!(strip("k/fc.0.weight", "q/", &[]), None);
    }
}
