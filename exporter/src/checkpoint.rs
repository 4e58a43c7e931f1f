//! What an export reads: the backbone, the optional classifier, the run's config and class names,
//! each checked against the model description before any byte of ONNX is written.

use std::path::{Path, PathBuf};

use models::{Arch, ClassifierFile, EncoderFile, Preprocess, ResNetDesc, TensorMap};

use crate::error::ExportError;

pub struct Checkpoint {
    pub desc: ResNetDesc,
    pub encoder: TensorMap,
    pub classifier: Option<ClassifierFile>,
    pub class_names: Vec<String>,
    pub preprocess: Preprocess,
    /// `RUN/config.json` beside the encoder, when there is one.
    pub config: Option<serde_json::Value>,
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Class names from a file: one per line, either `name` or `index<TAB>name[<TAB>...]` as in a
/// dataset's `classes.txt`.
pub fn read_class_names(path: &Path) -> Result<Vec<String>, ExportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ExportError::input(path, e))?;
    let names: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            match (f.next(), f.next()) {
                (Some(i), Some(name)) if i.trim().parse::<usize>().is_ok() => name.trim().into(),
                _ => l.trim().into(),
            }
        })
        .collect();
    if names.is_empty() {
        return Err(ExportError::input(path, "no class names"));
    }
    Ok(names)
}

pub struct LoadOptions<'a> {
    pub encoder: &'a Path,
    /// The backbone's prefix in a PyTorch file's names; None: detected.
    pub encoder_prefix: Option<&'a str>,
    pub classifier: Option<&'a Path>,
    pub arch: Option<Arch>,
    pub classes: Option<&'a Path>,
    pub config: Option<&'a Path>,
}

impl<'a> LoadOptions<'a> {
    /// Encoder (+ classifier); arch detected, class names and config from their defaults.
    pub fn new(encoder: &'a Path, classifier: Option<&'a Path>) -> Self {
        LoadOptions {
            encoder,
            encoder_prefix: None,
            classifier,
            arch: None,
            classes: None,
            config: None,
        }
    }
}

impl Checkpoint {
    pub fn load(o: &LoadOptions) -> Result<Self, ExportError> {
        let encoder =
            EncoderFile::with_prefix(o.encoder, o.encoder_prefix.map(str::to_string)).load()?;
        let file = display(o.encoder);
        let found = ResNetDesc::detect_arch(&encoder, &file)?;
        if let Some(a) = o.arch {
            if a != found {
                return Err(ExportError::Flag(format!(
                    "--arch {a}: {file} holds a {found} backbone"
                )));
            }
        }
        let desc = ResNetDesc::new(found);
        // A full pretraining checkpoint may carry the MoCo head (`fc.0`, `fc.2`); the backbone
        // export ignores it.
        encoder.check(&desc.tensors(), &file, found.name(), |n| {
            n.starts_with("fc.")
        })?;

        let classifier = o
            .classifier
            .map(|path| ClassifierFile::load(path, desc.feature_dim))
            .transpose()?;

        let config_path: Option<PathBuf> = o.config.map(Path::to_path_buf).or_else(|| {
            let p = o.encoder.parent()?.join("config.json");
            p.exists().then_some(p)
        });
        let config = match &config_path {
            None => None,
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ExportError::input(p, e))?;
                Some(
                    serde_json::from_str::<serde_json::Value>(&text)
                        .map_err(|e| ExportError::input(p, format!("not valid JSON: {e}")))?,
                )
            }
        };
        let preprocess = match config.as_ref().and_then(|c| c.get("preprocess")) {
            Some(v) => serde_json::from_value::<Preprocess>(v.clone())
                .map_err(|e| ExportError::input(config_path.as_deref().unwrap_or(o.encoder), e))?,
            None => Preprocess::default(),
        };

        let n_classes = classifier.as_ref().map(|c| c.head.fc.out_features);
        let class_names = match (o.classes, &classifier) {
            (Some(path), _) => read_class_names(path)?,
            (None, Some(c)) => c
                .class_names
                .clone()
                .unwrap_or_else(|| (0..c.head.fc.out_features).map(|i| i.to_string()).collect()),
            (None, None) => vec![],
        };
        if let Some(n) = n_classes {
            if class_names.len() != n {
                return Err(ExportError::Flag(format!(
                    "{} class names for a classifier with {n} outputs ({})",
                    class_names.len(),
                    o.classes
                        .map(display)
                        .unwrap_or_else(|| "classifier metadata".into())
                )));
            }
        }
        Ok(Checkpoint {
            desc,
            encoder,
            classifier,
            class_names,
            preprocess,
            config,
        })
    }
}
