//! The linear probe's feature standardisation (`linear --standardize`): MAE's probe puts a
//! BatchNorm without affine in front of the classifier, which makes the probe's lr independent of
//! the features' scale — the raw pooled features of a random and of a pretrained resnet differ in
//! scale by orders of magnitude, and MoCo's lr 30 fits neither. The statistics are those of the
//! train split's frozen features (eval transform), fixed before training; the trained layer is
//! folded back into one `fc` so the classifier file, the exported model and inference are the
//! same as without it.

use tch::{Kind, Tensor};

/// BatchNorm's epsilon: a feature that is constant over the train split maps to 0, not to NaN.
const EPS: f64 = 1e-5;

pub struct Standardizer {
    mean: Tensor,
    inv_std: Tensor,
}

impl Standardizer {
    /// Per-dimension mean and (biased, as BatchNorm normalises) variance of `[N, D]` features.
    pub fn fit(features: &Tensor) -> Self {
        let f = features.to_kind(Kind::Double);
        let mean = f.mean_dim(0, false, Kind::Double);
        let var = (&f - &mean).square().mean_dim(0, false, Kind::Double);
        Standardizer {
            mean: mean.to_kind(Kind::Float),
            inv_std: (var + EPS).rsqrt().to_kind(Kind::Float),
        }
    }

    pub fn apply(&self, features: &Tensor) -> Tensor {
        (features - &self.mean) * &self.inv_std
    }

    /// The `fc` on raw features equal to `fc(apply(x))`: `W' = W·diag(1/σ)`, `b' = b − W'μ`.
    pub fn fold(&self, weight: &Tensor, bias: &Tensor) -> (Tensor, Tensor) {
        let w = weight * self.inv_std.unsqueeze(0);
        let b = bias - w.mv(&self.mean);
        (w, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn features() -> Tensor {
        tch::manual_seed(3);
        // Columns of very different scale and offset, one constant.
        let scale = Tensor::from_slice(&[1e-3f32, 1.0, 40.0, 0.0]);
        let offset = Tensor::from_slice(&[5.0f32, -2.0, 300.0, 7.0]);
        Tensor::randn([64, 4], (Kind::Float, Device::Cpu)) * scale + offset
    }

    #[test]
    fn standardised_columns_have_zero_mean_and_unit_variance() {
        let f = features();
        let z = Standardizer::fit(&f).apply(&f);
        let mean = Vec::<f32>::try_from(z.mean_dim(0, false, Kind::Float)).unwrap();
        let var = Vec::<f32>::try_from(z.square().mean_dim(0, false, Kind::Float)).unwrap();
        for (d, m) in mean.iter().take(3).enumerate() {
            assert!(m.abs() < 1e-3, "dim {d}: mean {m}");
        }
        for (d, v) in var.iter().enumerate().take(3).skip(1) {
            assert!((v - 1.0).abs() < 1e-3, "dim {d}: var {v}");
        }
        // ε dominates a column whose variance is below it (σ² ≈ 1e-6 here): it is damped,
        // σ²/(σ² + ε) ≈ 0.09, as BatchNorm does.
        assert!(var[0] > 0.03 && var[0] < 0.2, "dim 0: var {}", var[0]);
        assert_eq!(
            (mean[3], var[3]),
            (0.0, 0.0),
            "the constant column maps to 0"
        );
    }

    #[test]
    fn the_folded_layer_on_raw_features_equals_the_layer_on_standardised_ones() {
        let f = features();
        let s = Standardizer::fit(&f);
        let w = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([3], (Kind::Float, Device::Cpu));
        let want = s.apply(&f).linear(&w, Some(&b));
        let (fw, fb) = s.fold(&w, &b);
        let got = f.linear(&fw, Some(&fb));
        // The raw features reach 300 and 1/σ reaches 300, so fp32 cancellation in W'x − W'μ
        // costs ~ |W'|·|x| · 2⁻²⁴ ≈ 1e-2 absolute at worst; relative to the logits' spread:
        let err = (&got - &want).abs().max().double_value(&[]);
        let spread = want.abs().max().double_value(&[]);
        assert!(
            err < 1e-3 * spread.max(1.0),
            "fold error {err}, logits up to {spread}"
        );
        // Without the bias correction (b' = b) the fold is wrong by W'μ.
        let wrong = f.linear(&fw, Some(&b));
        assert!((&wrong - &want).abs().max().double_value(&[]) > 1.0);
    }
}
