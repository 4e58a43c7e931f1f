//! Named recipes for `pretrain --preset`: settings chosen by measurement for one regime that are
//! not safe as defaults for every other. A preset fills only the flags the command line left
//! unset, so `--preset small-data --lr 0.12` is the preset with another lr.

use clap::ValueEnum;
use serde::Serialize;

use crate::pretrain::PretrainArgs;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Thousands to tens of thousands of images on a CPU or one small GPU (imagenette-sized):
    /// views of 64 px, the projector with BatchNorm (`--head-bn`), base lr 0.24, 32 images per
    /// BatchNorm group, queue 4096. Measured in docs/benchmarks.md ("the drift trap").
    SmallData,
}

/// Images per shuffle-BN group in the small-data recipe: what the official MoCo normalises over
/// (batch 256 on 8 GPUs).
const IMAGES_PER_BN_GROUP: usize = 32;

impl Preset {
    /// Sets the preset's values on `a` for every flag for which `given(flag id)` is false.
    pub fn apply(self, a: &mut PretrainArgs, given: impl Fn(&str) -> bool) {
        match self {
            Preset::SmallData => {
                if !given("crop") {
                    a.aug.crop = Some(64);
                }
                if !given("lr") {
                    a.lr = 0.24;
                }
                if !given("queue_size") {
                    a.queue_size = 4096;
                }
                if !given("bn_splits") {
                    a.bn_splits = (a.batch_size / IMAGES_PER_BN_GROUP).max(1) as i64;
                }
                a.head_bn = true;
            }
        }
    }
}

/// Applies `a.preset`, if any, to the arguments parsed from `m` (the flags' own matches: the
/// `pretrain` subcommand's).
pub fn resolve(a: &mut PretrainArgs, m: &clap::ArgMatches) {
    if let Some(p) = a.preset {
        p.apply(a, |id| {
            m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        });
        a.preset_applied = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: PretrainArgs,
    }

    fn parsed(args: &[&str]) -> PretrainArgs {
        use clap::{CommandFactory, FromArgMatches};
        let argv = [&["x", "--data", "d", "--out", "o"], args].concat();
        let m = Cli::command().get_matches_from(argv);
        let mut a = Cli::from_arg_matches(&m).unwrap().a;
        resolve(&mut a, &m);
        a
    }

    #[test]
    fn small_data_fills_the_unset_flags_and_keeps_the_given_ones() {
        let a = parsed(&[
            "--preset",
            "small-data",
            "--batch-size",
            "128",
            "--lr",
            "0.1",
        ]);
        assert_eq!(a.aug.crop, Some(64));
        assert_eq!(a.lr, 0.1, "an explicit --lr wins");
        assert_eq!((a.queue_size, a.bn_splits, a.head_bn), (4096, 4, true));
        let b = parsed(&["--preset", "small-data", "--crop", "80", "--bn-splits", "1"]);
        assert_eq!((b.aug.crop, b.bn_splits, b.lr), (Some(80), 1, 0.24));
        let plain = parsed(&[]);
        assert_eq!(
            (plain.aug.crop, plain.head_bn, plain.bn_splits),
            (None, false, 8)
        );
    }
}
