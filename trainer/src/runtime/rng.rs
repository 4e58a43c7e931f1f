//! Every random choice of a run comes from a stream named by (seed, purpose, index) — the epoch's
//! data order, a step's augmentations, a step's shuffle-BN permutation. Nothing random is carried
//! from step to step, so a resumed run draws exactly what an uninterrupted one would, and a
//! checkpoint needs no RNG state beyond the seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a stream is for; part of its key so that two purposes never share numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    EpochOrder = 1,
    Augment = 2,
    ShuffleBn = 3,
    Init = 4,
    Preview = 5,
    LinearOrder = 6,
    LinearAugment = 7,
    Sample = 8,
    LabelStudy = 9,
}

pub fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(purpose as u64).to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..].copy_from_slice(b"moco-rs\0");
    ChaCha8Rng::from_seed(key)
}

/// A uniformly random permutation of `0..n` (Fisher–Yates).
pub fn permutation(rng: &mut impl Rng, n: usize) -> Vec<i64> {
    let mut p: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_keyed_and_reproducible() {
        let a: u64 = stream(1, Purpose::Augment, 5).random();
        assert_eq!(a, stream(1, Purpose::Augment, 5).random::<u64>());
        assert_ne!(a, stream(1, Purpose::Augment, 6).random::<u64>());
        assert_ne!(a, stream(1, Purpose::ShuffleBn, 5).random::<u64>());
        assert_ne!(a, stream(2, Purpose::Augment, 5).random::<u64>());
        let mut p = permutation(&mut stream(0, Purpose::EpochOrder, 0), 100);
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<i64>>());
    }
}
