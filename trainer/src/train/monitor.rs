//! The kNN monitor: InstDisc's weighted kNN (k 200, T 0.1) of the backbone's pooled features,
//! a labeled bank against labeled queries, measured during pretraining on the lead rank.

use anyhow::{bail, Result};
use tch::Device;

use crate::config::{DataSource, KnnMonitorConfig};
use crate::data::DecodedSplit;
use crate::eval::knn;

pub struct KnnMonitor {
    pub bank: DecodedSplit,
    pub query: DecodedSplit,
    /// Every N epochs (0: only at the end).
    pub every: u64,
}

impl KnnMonitor {
    /// Opens the monitor's splits: the pretraining data's own unless `cfg.data` names another
    /// root. Without labels there, the monitor is off (said once), unless that root was named.
    pub fn open(
        cfg: &KnnMonitorConfig,
        data: &DataSource,
        progress: bool,
    ) -> Result<Option<KnnMonitor>> {
        let source = DataSource {
            root: cfg.data.clone().unwrap_or_else(|| data.root.clone()),
            ..data.clone()
        };
        let open = |s| source.open(s, progress);
        match (open(cfg.bank), open(cfg.query)) {
            (Ok(bank), Ok(query)) if bank.is_labeled() && query.is_labeled() => {
                Ok(Some(KnnMonitor {
                    bank,
                    query,
                    every: cfg.every,
                }))
            }
            (Ok(_), Ok(_)) if cfg.data.is_some() => bail!(
                "--knn-data {}: the kNN splits `{}`/`{}` have no labels",
                source.root.display(),
                cfg.bank.name(),
                cfg.query.name()
            ),
            (Err(e), _) | (_, Err(e)) if cfg.data.is_some() => Err(e),
            _ => {
                eprintln!(
                    "pretrain: no labeled kNN splits in {}; kNN monitor off",
                    source.root.display()
                );
                Ok(None)
            }
        }
    }

    /// Whether the monitor measures after `epoch` epochs (or at the end of the run).
    pub fn due(&self, epoch_done: Option<u64>, last_step: bool) -> bool {
        last_step || epoch_done.is_some_and(|e| self.every > 0 && e.is_multiple_of(self.every))
    }

    pub fn evaluate(&self, backbone: &models_tch::ResNet, device: Device) -> Result<f64> {
        let r = knn::evaluate(
            backbone,
            &self.bank,
            &self.query,
            (200, 0.1),
            device,
            256,
            false,
        )?;
        Ok(r.top1)
    }
}
