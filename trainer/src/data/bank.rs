//! Several decoded splits as one indexable set of images (pretraining's `unlabeled,train`).

use tch::Tensor;

use super::cache::{nchw_batch, DecodedSplit};

/// Several decoded splits seen as one list of images (pretraining reads `unlabeled,train`).
pub struct ImageBank {
    pub splits: Vec<DecodedSplit>,
    offsets: Vec<usize>,
}

impl ImageBank {
    /// Pretraining's images: read in a shuffled order (see [`DecodedSplit::expect_random_reads`]).
    pub fn new(splits: Vec<DecodedSplit>) -> Self {
        let mut offsets = vec![0];
        for s in &splits {
            s.expect_random_reads();
            offsets.push(offsets.last().unwrap() + s.n);
        }
        ImageBank { splits, offsets }
    }

    pub fn len(&self) -> usize {
        *self.offsets.last().unwrap()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn size(&self) -> u32 {
        self.splits[0].size
    }

    fn locate(&self, i: usize) -> (usize, usize) {
        let s = self.offsets.partition_point(|&o| o <= i) - 1;
        (s, i - self.offsets[s])
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let (s, j) = self.locate(i);
        self.splits[s].image(j)
    }

    pub fn batch(&self, idx: &[usize]) -> Tensor {
        nchw_batch(idx.iter().map(|&i| self.image(i)), idx.len(), self.size())
    }
}
