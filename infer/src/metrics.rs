//! Accuracy, per-class accuracy and the most frequent confusions.

use std::collections::HashMap;

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

/// `labels[i]` is the label of the i-th image of the split. Memory grows with the classes and
/// the distinct confusions seen, not with their square (a dense matrix over 10,000 classes would
/// be 800 MB).
pub fn accuracy(preds: &[Prediction], labels: &[usize], classes: &[String]) -> Accuracy {
    let c = classes
        .len()
        .max(labels.iter().copied().max().map_or(0, |m| m + 1));
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
    let (mut total, mut correct) = (vec![0usize; c], vec![0usize; c]);
    let mut confused: HashMap<(usize, usize), usize> = HashMap::new();
    let (mut top1, mut top5) = (0usize, 0usize);
    for p in preds {
        let label = labels[p.index];
        let first = p.top.first().copied().unwrap_or(usize::MAX);
        top1 += usize::from(first == label);
        top5 += usize::from(p.top.contains(&label));
        if first < c {
            total[label] += 1;
            if first == label {
                correct[label] += 1;
            } else {
                *confused.entry((label, first)).or_default() += 1;
            }
        }
    }
    let n = preds.len();
    let per_class = (0..c)
        .map(|k| ClassAccuracy {
            class: name(k),
            n: total[k],
            top1: if total[k] == 0 {
                0.0
            } else {
                correct[k] as f64 / total[k] as f64
            },
        })
        .collect();
    let mut pairs: Vec<(usize, usize, usize)> =
        confused.into_iter().map(|((l, p), k)| (k, l, p)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_accuracy_and_confusions_over_800_classes() {
        let classes: Vec<String> = (0..800).map(|k| k.to_string()).collect();
        // Two images per class; below class 700 the second one is predicted as the next class.
        let mut labels = Vec::new();
        let mut preds = Vec::new();
        for k in 0..800 {
            for j in 0..2 {
                let first = if j == 1 && k < 700 { (k + 1) % 800 } else { k };
                preds.push(Prediction {
                    index: labels.len(),
                    top: vec![first, (k + 2) % 800, k, 3, 4],
                });
                labels.push(k);
            }
        }
        // One confusion seen three times: three more images of class 256 predicted as 257.
        for _ in 0..3 {
            preds.push(Prediction {
                index: labels.len(),
                top: vec![257, 1, 2, 3, 4],
            });
            labels.push(256);
        }
        let a = accuracy(&preds, &labels, &classes);
        assert_eq!(a.n, 1603);
        assert_eq!(a.per_class.len(), 800);
        assert_eq!((a.per_class[5].n, a.per_class[5].top1), (2, 0.5));
        assert_eq!((a.per_class[750].n, a.per_class[750].top1), (2, 1.0));
        assert_eq!((a.per_class[256].n, a.per_class[256].top1), (5, 0.2));
        assert_eq!(a.top1, 900.0 / 1603.0);
        assert_eq!(a.top5, 1600.0 / 1603.0);
        let first = &a.top_confusions[0];
        assert_eq!(
            (first.label.as_str(), first.predicted.as_str(), first.count),
            ("256", "257", 4)
        );
        // Ties by count go by label, then by prediction.
        let rest: Vec<(&str, &str)> = a.top_confusions[1..4]
            .iter()
            .map(|c| (c.label.as_str(), c.predicted.as_str()))
            .collect();
        assert_eq!(rest, vec![("0", "1"), ("1", "2"), ("2", "3")]);
        assert_eq!(a.top_confusions.len(), 10);
    }
}
