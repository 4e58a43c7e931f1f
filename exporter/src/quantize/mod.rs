//! `--quantize int8`: the exported fp32 graph (BN folded) rewritten in QDQ form — the form ONNX
//! Runtime fuses into integer kernels (QLinearConv, QLinearAdd, QLinearGlobalAveragePool):
//!
//! - weights: per output channel, symmetric int8 (zero point 0), behind DequantizeLinear;
//!   biases int32 at scale input_scale · weight_scale, as ONNX Runtime's quantizer writes them;
//! - activations: per tensor, uint8, over a range chosen from each tensor's histogram on the
//!   calibration images (the eval transform of N training images; [`ranges`]: min/max, a
//!   percentile, or the least squared error), widened to hold 0 — the inputs of every Conv,
//!   Add, MaxPool and GlobalAveragePool and the pooled output, each behind a QuantizeLinear →
//!   DequantizeLinear pair; a ReLU output's range starts at 0, so its zero point is 0 and the
//!   runtime folds the ReLU into the quantization;
//! - MaxPool's output shares its input's scale and zero point, so it runs on uint8 as is;
//! - normalisation and the classifier (one small Gemm) stay in float, and so do the layers
//!   [`keep_float`] names or finds most sensitive.
//!
//! The int8 model is then run beside the fp32 one on images held back from calibration; `auto`
//! keeps the range method whose model agrees best, and `max_drop` refuses a model that
//! disagrees too often.

mod calibrate;
pub mod keep_float;
mod qdq;
pub mod ranges;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use datasets::{Format, Split};
use models::preprocess::META_QUANTIZATION;
use models::Preprocess;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

use crate::error::ExportError;
pub use keep_float::KeepFloat;
use keep_float::{FloatTry, Sensitivity};
pub use ranges::RangeMethod;

/// How the activation ranges are chosen (`--calibration`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// Each range method tried; the one whose model agrees best with fp32 on held-back images
    /// kept.
    Auto,
    #[value(name = "minmax")]
    MinMax,
    Percentile,
    Mse,
    Entropy,
}

impl Calibration {
    /// The range methods to try.
    fn methods(self) -> Vec<RangeMethod> {
        match self {
            Calibration::Auto => RangeMethod::ALL.to_vec(),
            Calibration::MinMax => vec![RangeMethod::MinMax],
            Calibration::Percentile => vec![RangeMethod::Percentile],
            Calibration::Mse => vec![RangeMethod::Mse],
            Calibration::Entropy => vec![RangeMethod::Entropy],
        }
    }
}

/// `--quantize int8`: where the calibration images come from and what the result must hold.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub data: PathBuf,
    pub split: Split,
    pub format: Option<Format>,
    /// How many images, spread evenly over the split.
    pub images: usize,
    pub calibration: Calibration,
    /// Refuse a model whose top-1 differs from fp32's on more than this many percent of the
    /// check images.
    pub max_drop: Option<f64>,
    pub keep_float: KeepFloat,
}

/// What the rewrite did, for the summary and the model's metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantSummary {
    pub activations: usize,
    pub conv_weights: usize,
    pub calibration_images: usize,
    /// The range method of the written model.
    pub calibration: RangeMethod,
    /// Images the int8 model was checked on, and whether they were held back from calibration.
    pub check_images: usize,
    pub held_back: bool,
    /// Share of the check images whose top-1 class is fp32's (None without a classifier).
    pub top1_agreement: Option<f64>,
    /// Mean cosine similarity of the int8 and fp32 outputs on the check images.
    pub output_cosine: f64,
    /// Every method tried, with its agreement and cosine.
    pub tried: Vec<Tried>,
    /// The layers left in float, most sensitive first.
    pub float_layers: Vec<String>,
    /// With `--keep-float auto`: every layer's error when it alone is int8, most sensitive first,
    /// and the models with the first 0, 1, … of them in float.
    pub sensitivity: Vec<Sensitivity>,
    pub float_tries: Vec<FloatTry>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Tried {
    pub calibration: RangeMethod,
    pub top1_agreement: Option<f64>,
    pub output_cosine: f64,
}

/// The int8 model's outputs against fp32's on the same images.
fn agreement(int8: &[Vec<f32>], fp32: &[Vec<f32>], logits: bool) -> (Option<f64>, f64) {
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]));
    let n = fp32.len().max(1) as f64;
    let same = int8
        .iter()
        .zip(fp32)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let cosine = int8
        .iter()
        .zip(fp32)
        .map(|(a, b)| {
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum();
            let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            dot / (norm(a) * norm(b)).max(f64::MIN_POSITIVE)
        })
        .sum::<f64>()
        / n;
    (logits.then_some(same as f64 / n), cosine)
}

/// Each calibrated tensor's parameters under the ranges `method` chooses from `hists`.
fn params_of(
    model: &ModelProto,
    names: &[String],
    hists: &[ranges::Histogram],
    method: RangeMethod,
) -> HashMap<String, qdq::QParams> {
    let ranges: Vec<(f32, f32)> = hists.iter().map(|h| h.range(method)).collect();
    qdq::activation_params(model, names, &ranges)
}

/// The fp32 model's output the int8 one is held to: `logits` (compared by top-1 and cosine),
/// else its first output (by cosine).
struct Reference {
    output: String,
    logits: bool,
    values: Vec<Vec<f32>>,
}

impl Reference {
    fn of(model: &ModelProto, check: &[f32], crop: usize) -> Result<Self, ExportError> {
        let g = model.graph.as_ref().expect("a built model");
        let logits = g.output.iter().any(|o| o.name == "logits");
        let output = if logits {
            "logits"
        } else {
            g.output[0].name.as_str()
        }
        .to_string();
        let values = calibrate::outputs(model, &output, check, crop)?;
        Ok(Reference {
            output,
            logits,
            values,
        })
    }

    fn compare(
        &self,
        int8: &ModelProto,
        check: &[f32],
        crop: usize,
    ) -> Result<(Option<f64>, f64), ExportError> {
        let out = calibrate::outputs(int8, &self.output, check, crop)?;
        Ok(agreement(&out, &self.values, self.logits))
    }

    /// ‖y − y_fp32‖² / ‖y_fp32‖² over the first images of the check set (as many as `images`
    /// holds).
    fn relative_error(
        &self,
        model: &ModelProto,
        images: &[f32],
        crop: usize,
    ) -> Result<f64, ExportError> {
        let out = calibrate::outputs(model, &self.output, images, crop)?;
        let (mut diff, mut norm) = (0f64, 0f64);
        for (a, b) in out.iter().flatten().zip(self.values.iter().flatten()) {
            diff += (*a as f64 - *b as f64).powi(2);
            norm += (*b as f64).powi(2);
        }
        Ok(diff / norm.max(f64::MIN_POSITIVE))
    }
}

/// A quantized model and what it was measured to be.
struct Candidate {
    model: ModelProto,
    params: HashMap<String, qdq::QParams>,
    activations: usize,
    conv_weights: usize,
    tried: Tried,
}

/// The fp32 model, its calibration and the check images every candidate is measured on.
struct Calibrated<'a> {
    model: &'a ModelProto,
    names: Vec<String>,
    hists: Vec<ranges::Histogram>,
    reference: Reference,
    check: &'a [f32],
    crop: usize,
}

impl Calibrated<'_> {
    /// The model with `method`'s ranges and `float` left in float, compared with fp32.
    fn candidate(
        &self,
        method: RangeMethod,
        float: &HashSet<String>,
    ) -> Result<Candidate, ExportError> {
        let params = params_of(self.model, &self.names, &self.hists, method);
        let (model, activations, conv_weights) = keep_float::apply(self.model, &params, float);
        let (top1, cosine) = self.reference.compare(&model, self.check, self.crop)?;
        Ok(Candidate {
            model,
            params,
            activations,
            conv_weights,
            tried: Tried {
                calibration: method,
                top1_agreement: top1,
                output_cosine: cosine,
            },
        })
    }

    /// Each of `methods` with `float` in float; the one that agrees best with fp32 (top-1, then
    /// cosine), and the record of all.
    fn best_of(
        &self,
        methods: &[RangeMethod],
        float: &HashSet<String>,
    ) -> Result<(Candidate, Vec<Tried>), ExportError> {
        let score = |t: &Tried| (t.top1_agreement.unwrap_or(1.0), t.output_cosine);
        let mut all = Vec::new();
        let mut best: Option<Candidate> = None;
        for &method in methods {
            let c = self.candidate(method, float)?;
            all.push(c.tried.clone());
            if best
                .as_ref()
                .is_none_or(|b| score(&c.tried) > score(&b.tried))
            {
                best = Some(c);
            }
        }
        Ok((best.expect("at least one method"), all))
    }

    /// `--keep-float auto`: the most sensitive layers of `chosen` tried in float one at a time
    /// (up to [`keep_float::MAX_AUTO`] tries, skipping those past the float budget), each kept
    /// when the model then agrees with fp32 more often.
    fn keep_sensitive(&self, chosen: Candidate) -> Result<AutoFloat, ExportError> {
        let per_image = 3 * self.crop * self.crop;
        let n = keep_float::SENSITIVITY_IMAGES.min(self.check.len() / per_image);
        let sample = &self.check[..n * per_image];
        let ranked = keep_float::rank(
            self.model,
            &chosen.params,
            &self.reference,
            sample,
            self.crop,
        )?;
        let macs =
            keep_float::conv_macs(self.model.graph.as_ref().expect("a built model"), self.crop);
        let total: f64 = macs.values().sum();
        let share = |layers: &[String]| {
            layers.iter().filter_map(|l| macs.get(l)).sum::<f64>() / total.max(1.0)
        };
        let try_of = |layers: Vec<String>, t: &Tried| FloatTry {
            float_share: share(&layers),
            layers,
            top1_agreement: t.top1_agreement,
            output_cosine: t.output_cosine,
        };
        let mut tries = vec![try_of(Vec::new(), &chosen.tried)];
        let (mut best, mut best_try) = (chosen, 0);
        let affordable = ranked
            .iter()
            .filter(|s| share(std::slice::from_ref(&s.layer)) <= keep_float::MAX_FLOAT_SHARE);
        for s in affordable.take(keep_float::MAX_AUTO) {
            let mut layers = tries[best_try].layers.clone();
            layers.push(s.layer.clone());
            if share(&layers) > keep_float::MAX_FLOAT_SHARE {
                continue;
            }
            let float: HashSet<String> = layers.iter().cloned().collect();
            let c = self.candidate(best.tried.calibration, &float)?;
            tries.push(try_of(layers, &c.tried));
            let last = tries.len() - 1;
            if keep_float::better(&tries[last], &tries[best_try]) {
                (best, best_try) = (c, last);
            }
        }
        Ok(AutoFloat {
            chosen: best,
            layers: tries[best_try].layers.clone(),
            ranked,
            tries,
        })
    }
}

/// What `--keep-float auto` chose and measured.
struct AutoFloat {
    chosen: Candidate,
    layers: Vec<String>,
    ranked: Vec<Sensitivity>,
    tries: Vec<FloatTry>,
}

/// `--max-drop`: an error when the chosen model's top-1 differs from fp32's too often.
fn check_max_drop(q: &QuantizeOptions, s: &QuantSummary) -> Result<(), ExportError> {
    let (Some(max), Some(top1)) = (q.max_drop, s.top1_agreement) else {
        return Ok(());
    };
    let differ = 100.0 * (1.0 - top1);
    if differ <= max {
        return Ok(());
    }
    Err(ExportError::Flag(format!(
        "--max-drop {max}: the int8 model's top-1 differs from fp32's on {differ:.2} % of {} {} \
         images (best calibration: {}); nothing written",
        s.check_images,
        if s.held_back {
            "held-back"
        } else {
            "calibration"
        },
        s.calibration.name()
    )))
}

/// The `moco.quantization` metadata entry.
fn record(q: &QuantizeOptions, s: &QuantSummary) -> StringStringEntryProto {
    let value = serde_json::json!({
        "scheme": "int8 QDQ: weights per output channel, symmetric int8; activations per \
                   tensor, uint8",
        "calibration": s.calibration,
        "calibration_data": q.data.display().to_string(),
        "calibration_split": q.split.name(),
        "calibration_images": s.calibration_images,
        "check_images": s.check_images,
        "held_back": s.held_back,
        "top1_agreement": s.top1_agreement,
        "tried": s.tried,
        "float_layers": s.float_layers,
    });
    StringStringEntryProto {
        key: META_QUANTIZATION.into(),
        value: value.to_string(),
    }
}

/// Rewrites `model` (fp32, BN folded, built with `pre`) in QDQ form, calibrated on `q`'s
/// images, checked against fp32, and records how in its metadata.
pub fn quantize_model(
    model: &mut ModelProto,
    q: &QuantizeOptions,
    pre: &Preprocess,
) -> Result<QuantSummary, ExportError> {
    let images = calibrate::images(q, pre)?;
    let crop = pre.crop as usize;
    let per_image = 3 * crop * crop;
    let names = calibrate::quantized_tensors(model.graph.as_ref().expect("a built model"));
    let hists = calibrate::histograms(model, &names, &images.calibrate, crop)?;
    let reference = Reference::of(model, &images.check, crop)?;
    let cal = Calibrated {
        model,
        names,
        hists,
        reference,
        check: &images.check,
        crop,
    };
    let named = match &q.keep_float {
        KeepFloat::Auto => Vec::new(),
        KeepFloat::Layers(l) => {
            keep_float::named(cal.model.graph.as_ref().expect("a built model"), l)?
        }
    };
    let (chosen, tried) =
        cal.best_of(&q.calibration.methods(), &named.iter().cloned().collect())?;
    let (chosen, float_layers, sensitivity, float_tries) = match q.keep_float {
        KeepFloat::Auto => {
            let a = cal.keep_sensitive(chosen)?;
            (a.chosen, a.layers, a.ranked, a.tries)
        }
        KeepFloat::Layers(_) => (chosen, named, Vec::new(), Vec::new()),
    };
    let summary = QuantSummary {
        activations: chosen.activations,
        conv_weights: chosen.conv_weights,
        calibration_images: images.calibrate.len() / per_image,
        calibration: chosen.tried.calibration,
        check_images: images.check.len() / per_image,
        held_back: images.held_back,
        top1_agreement: chosen.tried.top1_agreement,
        output_cosine: chosen.tried.output_cosine,
        tried,
        float_layers,
        sensitivity,
        float_tries,
    };
    check_max_drop(q, &summary)?;
    *model = chosen.model;
    model.metadata_props.push(record(q, &summary));
    Ok(summary)
}
