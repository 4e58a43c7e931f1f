//! The balanced strategy: equal quotas per predicted class.

/// Equal quotas per predicted class (the remainder to the classes with most candidates), by
/// descending `score` within each class; quotas a class cannot fill go to the best of the rest.
pub(super) fn balanced(pred: &[i64], score: &[f64], classes: usize, budget: usize) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &c) in pred.iter().enumerate() {
        by_class[c as usize].push(i);
    }
    for v in &mut by_class {
        v.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    }
    let mut picks = Vec::with_capacity(budget);
    // Round-robin over classes: rank r of every class before rank r+1 of any.
    let mut r = 0;
    while picks.len() < budget && by_class.iter().any(|v| v.len() > r) {
        let mut round: Vec<usize> = by_class.iter().filter_map(|v| v.get(r).copied()).collect();
        round.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        for i in round {
            if picks.len() < budget {
                picks.push(i);
            }
        }
        r += 1;
    }
    picks
}
