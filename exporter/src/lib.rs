//! Checkpoint (safetensors) → ONNX, written from Rust without libtorch.
//!
//! The graph is the second lowering of `models::ResNetDesc` ([`lower_resnet`]), emitted as the
//! protobuf types tract-onnx already carries (`tract_onnx::pb`) and encoded with prost.

pub mod checkpoint;
pub mod cli;
pub mod error;
pub mod fold;
pub mod lower_resnet;
pub mod onnx_graph;
pub mod quantize;

use std::path::Path;

use models::preprocess::{META_ARCH, META_CLASSES, META_SOURCE};
use prost::Message;
use serde::Serialize;
use tract_onnx::pb::{ModelProto, OperatorSetIdProto, StringStringEntryProto};

pub use checkpoint::{Checkpoint, LoadOptions};
pub use error::ExportError;
use onnx_graph::{Dim, GraphBuilder};
pub use quantize::QuantizeOptions;

/// Opset 17: every op used here is stable since opset 13, and both ONNX Runtime 1.31 and tract
/// 0.23 load it. IR version 8 is what onnx 1.13+ writes for opset 17.
pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// Fold eval-mode BatchNorm into the convolutions (the default; `--no-fold` for debugging).
    pub fold: bool,
    /// Also output the pooled backbone features.
    pub with_features: bool,
}

impl Default for ExportOptions {
    /// What `moco-export` does without flags: BN folded, logits only.
    fn default() -> Self {
        ExportOptions {
            fold: true,
            with_features: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub out: String,
    pub arch: String,
    pub outputs: Vec<String>,
    pub classes: usize,
    pub nodes: usize,
    pub folded: bool,
    pub bytes: usize,
    pub opset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<quantize::QuantSummary>,
}

/// Builds the ModelProto: `image` [N,3,crop,crop] in [0,1] → normalise → backbone → `logits`
/// (and/or `features`).
pub fn build_model(ck: &Checkpoint, opts: ExportOptions, source: serde_json::Value) -> ModelProto {
    let p = &ck.preprocess;
    let crop = p.crop as i64;
    let mut g = GraphBuilder::new(&format!("moco-{}", ck.desc.arch));
    g.input(
        "image",
        &[
            Dim::Named("N"),
            Dim::Fixed(3),
            Dim::Fixed(crop),
            Dim::Fixed(crop),
        ],
    );
    let mean = g.initializer("normalize.mean", &[1, 3, 1, 1], &p.mean);
    let std = g.initializer("normalize.std", &[1, 3, 1, 1], &p.std);
    let centered = g.node(
        "Sub",
        "normalize.sub",
        &["image", &mean],
        "normalize.sub",
        vec![],
    );
    let x = g.node("Div", "normalize", &[&centered, &std], "normalize", vec![]);
    let features = lower_resnet::lower_backbone(&mut g, &ck.desc, &ck.encoder, &x, opts.fold);

    let mut outputs = Vec::new();
    if let Some(c) = &ck.classifier {
        lower_resnet::lower_linear(&mut g, &c.head.fc, &c.map, &features, "logits");
        g.output(
            "logits",
            &[Dim::Named("N"), Dim::Fixed(c.head.fc.out_features as i64)],
        );
        outputs.push("logits".to_string());
    }
    if ck.classifier.is_none() || opts.with_features {
        g.output(
            "features",
            &[Dim::Named("N"), Dim::Fixed(ck.desc.feature_dim as i64)],
        );
        outputs.push("features".to_string());
    }

    let mut meta = p.to_metadata();
    meta.push((
        META_CLASSES.into(),
        serde_json::to_string(&ck.class_names).unwrap_or_default(),
    ));
    meta.push((META_ARCH.into(), ck.desc.arch.name().into()));
    meta.push((META_SOURCE.into(), source.to_string()));
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "moco-rs".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "MoCo v2 {} exported by moco-rs; outputs {outputs:?}",
            ck.desc.arch
        ),
        graph: Some(g.finish()),
        metadata_props: meta
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    }
}

/// Loads, checks, builds and writes atomically (never a partial `.onnx`).
pub fn export(
    load: &LoadOptions,
    opts: ExportOptions,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    export_quantized(load, opts, None, out)
}

/// [`export`], and with `quant` the graph rewritten in int8 QDQ form ([`quantize`]).
pub fn export_quantized(
    load: &LoadOptions,
    opts: ExportOptions,
    quant: Option<&QuantizeOptions>,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    if quant.is_some() && !opts.fold {
        return Err(ExportError::Flag(
            "--quantize folds BatchNorm into the convolutions first: drop --no-fold".into(),
        ));
    }
    let ck = Checkpoint::load(load)?;
    let source = serde_json::json!({
        "encoder": load.encoder.display().to_string(),
        "classifier": load.classifier.map(|p| p.display().to_string()),
        "config": ck.config,
        "folded": opts.fold,
        "exporter": format!("moco-rs {}", env!("CARGO_PKG_VERSION")),
    });
    let mut model = build_model(&ck, opts, source);
    let quantization = quant
        .map(|q| quantize::quantize_model(&mut model, q, &ck.preprocess))
        .transpose()?;
    let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    let outputs = model
        .graph
        .as_ref()
        .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
        .unwrap_or_default();
    let bytes = model.encode_to_vec();
    atomic_io::write_atomic(out, &bytes).map_err(models::ModelError::from)?;
    Ok(ExportSummary {
        out: out.display().to_string(),
        arch: ck.desc.arch.name().into(),
        outputs,
        classes: ck.class_names.len(),
        nodes,
        folded: opts.fold,
        bytes: bytes.len(),
        opset: OPSET,
        quantization,
    })
}
