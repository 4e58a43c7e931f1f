//! Activation ranges from a tensor's histogram over the calibration images: the plain min/max,
//! a percentile, the range that minimises the expected squared quantization error, or the one
//! whose 255-level quantization loses the least information (KL divergence, TensorRT's entropy
//! calibration).
//! Written here because the choice needs only a histogram and a few lines of arithmetic; the
//! quantizers of ONNX Runtime and TensorRT do the same (their code is Python or C++).

use serde::Serialize;

/// Bins of a tensor's histogram, over its [min, max] widened to hold 0.
pub const BINS: usize = 2048;
/// The share of values a percentile range keeps (ONNX Runtime's default percentile).
pub const PERCENTILE: f64 = 0.9999;
/// Clipping factors tried by the MSE search: the range times 0.97^k.
const MSE_STEPS: i32 = 64;

/// How the activation ranges are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeMethod {
    /// Every value the calibration images reached.
    MinMax,
    /// The central 99.99 % of the values (the tails clipped).
    Percentile,
    /// The clipping that minimises rounding + clipping error over the histogram.
    Mse,
    /// The clipping whose quantized histogram is closest to the clipped one in KL divergence.
    Entropy,
}

impl RangeMethod {
    pub const ALL: [RangeMethod; 4] = [
        RangeMethod::Mse,
        RangeMethod::Entropy,
        RangeMethod::Percentile,
        RangeMethod::MinMax,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RangeMethod::MinMax => "minmax",
            RangeMethod::Percentile => "percentile",
            RangeMethod::Mse => "mse",
            RangeMethod::Entropy => "entropy",
        }
    }
}

/// Counts of one tensor's values in [`BINS`] equal bins over `[lo, hi]` (lo ≤ 0 ≤ hi).
#[derive(Debug, Clone)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(min: f32, max: f32) -> Self {
        Histogram {
            lo: min.min(0.0),
            hi: max.max(0.0),
            counts: vec![0; BINS],
        }
    }

    fn width(&self) -> f64 {
        (self.hi - self.lo) as f64 / BINS as f64
    }

    pub fn add(&mut self, values: impl Iterator<Item = f32>) {
        let w = self.width();
        if w <= 0.0 {
            return;
        }
        for v in values {
            let bin = ((v - self.lo) as f64 / w) as usize;
            self.counts[bin.min(BINS - 1)] += 1;
        }
    }

    fn center(&self, bin: usize) -> f64 {
        self.lo as f64 + (bin as f64 + 0.5) * self.width()
    }

    /// The range `method` chooses.
    pub fn range(&self, method: RangeMethod) -> (f32, f32) {
        match method {
            RangeMethod::MinMax => (self.lo, self.hi),
            RangeMethod::Percentile => self.percentile_range(),
            RangeMethod::Mse => self.mse_range(),
            RangeMethod::Entropy => self.entropy_range(),
        }
    }

    fn percentile_range(&self) -> (f32, f32) {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return (self.lo, self.hi);
        }
        let tail = ((1.0 - PERCENTILE) * total as f64) as u64;
        let edge = |bins: &mut dyn Iterator<Item = usize>| {
            let mut seen = 0;
            for b in bins {
                seen += self.counts[b];
                if seen > tail {
                    return b;
                }
            }
            0
        };
        let hi_bin = edge(&mut (0..BINS).rev());
        let lo_bin = edge(&mut (0..BINS));
        let w = self.width();
        let hi = self.lo as f64 + (hi_bin + 1) as f64 * w;
        // A one-sided tensor (a ReLU's output) keeps its exact 0.
        let lo = if self.lo < 0.0 {
            self.lo as f64 + lo_bin as f64 * w
        } else {
            0.0
        };
        (lo.min(0.0) as f32, hi.max(0.0) as f32)
    }

    /// Expected squared error of uint8 over `[a, b]`: s²/12 for each value inside (uniform
    /// rounding), the distance to the edge squared for each value clipped.
    fn squared_error(&self, a: f64, b: f64) -> f64 {
        let s2 = ((b - a) / 255.0).powi(2);
        (0..BINS)
            .filter(|&i| self.counts[i] > 0)
            .map(|i| {
                let x = self.center(i);
                let e = if x < a {
                    (a - x).powi(2)
                } else if x > b {
                    (x - b).powi(2)
                } else {
                    s2 / 12.0
                };
                e * self.counts[i] as f64
            })
            .sum()
    }

    fn mse_range(&self) -> (f32, f32) {
        self.least(|t| self.squared_error(t * self.lo as f64, t * self.hi as f64))
    }

    /// The range `[t·lo, t·hi]` over the clipping factors `t = 0.97^k` whose `cost(t)` is least.
    fn least(&self, cost: impl Fn(f64) -> f64) -> (f32, f32) {
        let best = (0..MSE_STEPS)
            .map(|k| 0.97f64.powi(k))
            .map(|t| (cost(t), t))
            .fold((f64::INFINITY, 1.0), |a, b| if b.0 < a.0 { b } else { a });
        (
            (best.1 * self.lo as f64) as f32,
            (best.1 * self.hi as f64) as f32,
        )
    }

    fn entropy_range(&self) -> (f32, f32) {
        self.least(|t| self.clipping_divergence(t))
    }

    /// KL(P ‖ Q) for the range `[t·lo, t·hi]`: P is the histogram inside it with the clipped
    /// values added to its edge bins, Q the same bins (without them) merged into 255 levels and
    /// spread back over P's non-empty bins. Infinite when the range holds fewer than 255 bins.
    fn clipping_divergence(&self, t: f64) -> f64 {
        let w = self.width();
        let bin = |x: f64| (((x - self.lo as f64) / w).round() as usize).min(BINS);
        let (a, b) = (bin(t * self.lo as f64), bin(t * self.hi as f64));
        let n = b.saturating_sub(a);
        if n < LEVELS {
            return f64::INFINITY;
        }
        let inside = &self.counts[a..b];
        let mut p: Vec<f64> = inside.iter().map(|&c| c as f64).collect();
        p[0] += self.counts[..a].iter().sum::<u64>() as f64;
        p[n - 1] += self.counts[b..].iter().sum::<u64>() as f64;
        // 0 is exact in uint8 (the zero point), so the bin holding it — a ReLU output's spike —
        // is its own level rather than spread over its neighbours: spreading it would make any
        // range wider than 255 bins look lossy.
        let zero = ((-self.lo as f64 / w) as usize).min(BINS - 1);
        let exact = (a..b).contains(&zero).then(|| zero - a);
        let mut q = vec![0f64; n];
        for level in 0..LEVELS {
            let (s, e) = (level * n / LEVELS, (level + 1) * n / LEVELS);
            let merged = || (s..e).filter(|&i| Some(i) != exact);
            let total: f64 = merged().map(|i| inside[i] as f64).sum();
            let nonzero = merged().filter(|&i| p[i] > 0.0).count();
            for i in merged().filter(|&i| p[i] > 0.0) {
                q[i] = total / nonzero as f64;
            }
        }
        if let Some(z) = exact {
            q[z] = inside[z] as f64;
        }
        kl_divergence(&smoothed(&p), &smoothed(&q))
    }
}

/// Levels of a uint8 range, as the KL search merges bins into them.
const LEVELS: usize = 255;

/// `v` normalised to sum 1, its empty bins given a small share taken evenly from the others,
/// so that the divergence stays finite where a level holds clipped values only.
fn smoothed(v: &[f64]) -> Vec<f64> {
    const EPS: f64 = 1e-4;
    let total: f64 = v.iter().sum();
    let zeros = v.iter().filter(|&&x| x == 0.0).count();
    if total == 0.0 || zeros == v.len() {
        return vec![1.0 / v.len() as f64; v.len()];
    }
    let take = EPS * zeros as f64 / (v.len() - zeros) as f64;
    v.iter()
        .map(|&x| if x == 0.0 { EPS } else { x / total - take })
        .collect()
}

fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(p, _)| **p > 0.0)
        .map(|(p, q)| p * (p / q.max(f64::MIN_POSITIVE)).ln())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_keeps_an_outlier_and_the_percentile_clips_it() {
        // 10,000 values over [0, 1] and one at 100.
        let mut h = Histogram::new(0.0, 100.0);
        h.add((0..10_000).map(|i| i as f32 / 10_000.0).chain([100.0]));
        assert_eq!(h.range(RangeMethod::MinMax), (0.0, 100.0));
        let (lo, hi) = h.range(RangeMethod::Percentile);
        assert!(lo == 0.0 && hi < 1.1, "{lo} {hi}");
    }

    #[test]
    fn mse_clips_an_exponential_tail_where_rounding_costs_more() {
        // A million exponential values (max ≈ 14.5): 8-bit rounding over the whole range costs
        // more than clipping the thin tail; the optimum is near 11.
        let n = 1_000_000;
        let mut h = Histogram::new(0.0, 14.6);
        h.add((0..n).map(|i| -(((i as f64 + 0.5) / n as f64).ln()) as f32));
        let (lo, hi) = h.range(RangeMethod::Mse);
        assert!(lo == 0.0 && (9.5..13.0).contains(&hi), "{lo} {hi}");
    }

    #[test]
    fn entropy_clips_a_thin_tail_and_keeps_a_range_without_tails() {
        // An exponential bulk and a few far outliers: the KL search clips the outliers' range;
        // a uniform tensor keeps its range.
        let n = 1_000_000;
        let mut h = Histogram::new(0.0, 40.0);
        h.add(
            (0..n)
                .map(|i| -(((i as f64 + 0.5) / n as f64).ln()) as f32)
                .chain([40.0; 5]),
        );
        let (lo, hi) = h.range(RangeMethod::Entropy);
        assert!(lo == 0.0 && hi < 30.0, "{lo} {hi}");
        let mut h = Histogram::new(-1.0, 1.0);
        h.add((0..100_000).map(|i| i as f32 / 50_000.0 - 1.0));
        let (lo, hi) = h.range(RangeMethod::Entropy);
        assert!(lo < -0.9 && hi > 0.9, "{lo} {hi}");
    }

    #[test]
    fn mse_keeps_a_range_without_tails() {
        let mut h = Histogram::new(-1.0, 1.0);
        h.add((0..10_000).map(|i| i as f32 / 5_000.0 - 1.0));
        let (lo, hi) = h.range(RangeMethod::Mse);
        assert!(lo < -0.9 && hi > 0.9, "{lo} {hi}");
    }
}
