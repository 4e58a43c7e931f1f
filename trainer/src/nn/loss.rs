//! The contrastive losses of the pretraining methods, on embeddings: InfoNCE against a queue
//! (MoCo v1/v2, and label-request's per-image score), InfoNCE against the batch's keys (MoCo v3),
//! NT-Xent over 2N views (SimCLR). Under autocast every loss runs in float32 (PyTorch AMP's
//! policy for norms, softmax, log-softmax, sums and means), on every device: see
//! [`crate::nn::amp::full_precision`].

use tch::{Kind, Tensor};

use crate::nn::amp::{full_precision, to_full};
use crate::runtime::faults::{planted, Fault};

/// Planted fault: NT-Xent with each row's similarity to itself left among the negatives.
pub const UNMASKED_SELF: Fault = "nt-xent unmasked self";

/// `F.normalize(x, dim=1)`: x / max(‖x‖, 1e-12), in float32 when `x` is a half type.
pub fn normalize(x: &Tensor) -> Tensor {
    full_precision(|| {
        let x = to_full(x);
        let norm = x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12);
        x / norm
    })
}

/// Mean cross entropy of `logits` `[N, C]` against class indices `labels` `[N]`, computed in the
/// logits' own precision, float32 for a half type (tch's `cross_entropy_for_logits` computes the
/// log-softmax in f32 whatever the input, float64 included).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    full_precision(|| {
        let logits = to_full(logits);
        logits.log_softmax(-1, logits.kind()).nll_loss(labels)
    })
}

/// MoCo's InfoNCE logits [q·k, q·negatives]/T `[N, 1 + K]`, the positive at index 0. `q`, `k`
/// `[N, D]` and `negatives` `[D, K]` are l2-normalised; no gradient flows into the negatives.
pub fn info_nce_logits(q: &Tensor, k: &Tensor, negatives: &Tensor, temperature: f64) -> Tensor {
    full_precision(|| {
        let q = to_full(q);
        logits_with(&q, k, &negative_logits(&q, negatives), temperature)
    })
}

/// q·negatives `[N, K]` for a float32 `q`: the costly part of the logits, which one query's
/// terms against several keys share.
fn negative_logits(q: &Tensor, negatives: &Tensor) -> Tensor {
    q.mm(&to_full(negatives).detach())
}

/// [q·k, `l_neg`]/T for a float32 `q`.
fn logits_with(q: &Tensor, k: &Tensor, l_neg: &Tensor, temperature: f64) -> Tensor {
    // einsum as the official code writes it: a row-wise sum rounds differently in float32.
    let l_pos = Tensor::einsum("nc,nc->n", &[q, &to_full(k)], None::<i64>).unsqueeze(-1);
    Tensor::cat(&[&l_pos, l_neg], 1) / temperature
}

/// MoCo's InfoNCE: the mean cross entropy of [`info_nce_logits`] against index 0.
pub fn info_nce(q: &Tensor, k: &Tensor, queue: &Tensor, temperature: f64) -> Tensor {
    let logits = info_nce_logits(q, k, queue, temperature);
    let labels = Tensor::zeros([q.size()[0]], (Kind::Int64, q.device()));
    cross_entropy(&logits, &labels)
}

/// [`info_nce`] of the queries `q` against each of `keys`, one term per key, with the queue's
/// logits computed once for all of them.
pub fn info_nce_per_key(
    q: &Tensor,
    keys: &[&Tensor],
    queue: &Tensor,
    temperature: f64,
) -> Vec<Tensor> {
    full_precision(|| {
        let q = to_full(q);
        let l_neg = negative_logits(&q, queue);
        let labels = Tensor::zeros([q.size()[0]], (Kind::Int64, q.device()));
        keys.iter()
            .map(|k| cross_entropy(&logits_with(&q, k, &l_neg, temperature), &labels))
            .collect()
    })
}

/// MoCo v3's `contrastive_loss`: the queries `q` `[n, D]` against every key of the global batch
/// `keys` `[N, D]` (both normalised here), query i's positive at `labels[i]`, scaled by 2T as the
/// official code does.
pub fn batch_info_nce(q: &Tensor, keys: &Tensor, labels: &Tensor, temperature: f64) -> Tensor {
    full_precision(|| {
        let logits = normalize(q).mm(&normalize(keys).transpose(0, 1)) / temperature;
        cross_entropy(&logits, labels) * (2.0 * temperature)
    })
}

/// SimCLR's NT-Xent over `z` `[2N, D]` (views 1 then views 2): each row's positive is its other
/// view, its negatives the other 2N − 2 rows; self-similarity is masked out. The mean over all
/// 2N rows.
pub fn nt_xent(z: &Tensor, temperature: f64) -> Tensor {
    full_precision(|| nt_xent_full(z, temperature))
}

fn nt_xent_full(z: &Tensor, temperature: f64) -> Tensor {
    let z = normalize(z);
    let n2 = z.size()[0];
    let n = n2 / 2;
    let sim = z.mm(&z.transpose(0, 1)) / temperature;
    let sim = if planted(UNMASKED_SELF) {
        sim
    } else {
        let eye = Tensor::eye(n2, (Kind::Bool, z.device()));
        sim.masked_fill(&eye, f64::NEG_INFINITY)
    };
    let idx = Tensor::arange(n2, (Kind::Int64, z.device()));
    let labels = (idx + n).remainder(n2);
    cross_entropy(&sim, &labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(rows: &[&[f64]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    /// Two pairs of orthogonal unit vectors: each row's positive (cos 1) against two negatives
    /// (cos 0) → −log(e^{1/T} / (e^{1/T} + 2)).
    #[test]
    fn nt_xent_of_perfect_pairs() {
        let z = t(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 0.0], &[0.0, 1.0]]);
        let temp = 0.5;
        let want = -((1.0f64 / temp).exp() / ((1.0f64 / temp).exp() + 2.0)).ln();
        assert!((nt_xent(&z, temp).double_value(&[]) - want).abs() < 1e-12);
    }

    /// With one key per query the loss is 0 (times 2T), whatever T.
    #[test]
    fn batch_info_nce_of_one_pair_is_zero() {
        let q = Tensor::randn([1, 8], (Kind::Double, Device::Cpu));
        let labels = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
        assert!(batch_info_nce(&q, &q, &labels, 1.0).double_value(&[]).abs() < 1e-12);
    }
}
