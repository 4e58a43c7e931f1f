//! Accuracy, per-class accuracy and the most frequent confusions.

use serde::Serialize;

use crate::pipeline::Prediction;

#[derive(Debug, Clone, Serialize)]
pub struct ClassAccuracy {
    pub class: String,
    pub n: usize,
    pub top1: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Confusion {
    pub label: String,
    pub predicted: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
    pub n: usize,
    pub per_class: Vec<ClassAccuracy>,
    pub top_confusions: Vec<Confusion>,
}

/// `labels[i]` is the label of the i-th image of the split.
pub fn accuracy(preds: &[Prediction], labels: &[usize], classes: &[String]) -> Accuracy {
    let c = classes
        .len()
        .max(labels.iter().copied().max().map_or(0, |m| m + 1));
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
    let mut confusion = vec![0usize; c * c];
    let (mut top1, mut top5) = (0usize, 0usize);
    for p in preds {
        let label = labels[p.index];
        let first = p.top.first().copied().unwrap_or(usize::MAX);
        top1 += usize::from(first == label);
        top5 += usize::from(p.top.contains(&label));
        if first < c {
            confusion[label * c + first] += 1;
        }
    }
    let n = preds.len();
    let per_class = (0..c)
        .map(|k| {
            let row = &confusion[k * c..(k + 1) * c];
            let total: usize = row.iter().sum();
            ClassAccuracy {
                class: name(k),
                n: total,
                top1: if total == 0 {
                    0.0
                } else {
                    row[k] as f64 / total as f64
                },
            }
        })
        .collect();
    let mut pairs: Vec<(usize, usize, usize)> = (0..c * c)
        .filter(|&i| i / c != i % c && confusion[i] > 0)
        .map(|i| (confusion[i], i / c, i % c))
        .collect();
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    Accuracy {
        top1: frac(top1),
        top5: frac(top5),
        n,
        per_class,
        top_confusions: pairs
            .into_iter()
            .take(10)
            .map(|(count, l, p)| Confusion {
                label: name(l),
                predicted: name(p),
                count,
            })
            .collect(),
    }
}
