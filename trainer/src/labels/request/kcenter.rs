//! The diversity strategy: greedy k-center on normalized features.

use tch::Tensor;

use crate::nn::loss::normalize;

/// Greedy farthest-first selection: `budget` rows of `f` (l2-normalized), starting from
/// `centers`. Returns the picks in order with their distance (1 − cosine) to the nearest center
/// when picked. Each pick reads every row once: O(N · budget), the one strategy that must hold
/// every pool feature.
pub(super) fn k_center(
    f: &Tensor,
    centers: &Tensor,
    budget: usize,
    progress: bool,
) -> Vec<(usize, f64)> {
    let c = normalize(centers);
    let mut dist = tch::no_grad(|| {
        let parts: Vec<Tensor> = f
            .split(4096, 0)
            .iter()
            .map(|chunk| {
                let sim = chunk.mm(&c.transpose(0, 1));
                1.0 - sim.amax(&[1i64][..], false)
            })
            .collect();
        Tensor::cat(&parts, 0)
    });
    let mut picks = Vec::with_capacity(budget);
    let bar = crate::runtime::progress::bar(budget as u64, "k-center picks", progress);
    for _ in 0..budget {
        bar.inc(1);
        let i = dist.argmax(0, false).int64_value(&[]);
        let d = dist.double_value(&[i]);
        picks.push((i as usize, d));
        let new = tch::no_grad(|| 1.0 - f.mv(&f.get(i)));
        dist = dist.minimum(&new);
        // A picked image is at distance 0 from itself; keep it from being picked again when
        // every remaining distance is 0 (duplicates).
        let _ = dist.get(i).fill_(-1.0);
    }
    bar.finish_and_clear();
    picks
}
