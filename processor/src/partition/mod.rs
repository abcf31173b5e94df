//! One raw partition's loop: the edge around the rules.
//!
//! A [`worker::Worker`] folds its partition's records in offset order through
//! [`crate::rules::decide`], sends the outputs and waits for their acknowledgements,
//! persists the state changes in one atomic sled batch, and only then lets the offset
//! go to the group. It reaches the outside only through the ports in [`io`], so the
//! whole loop — commit order, retries, reconcile, rebuild — is unit-tested in memory
//! (`tests.rs`).
//!
//! Files: [`worker`] (the loop and its commits), `batch.rs` (deciding one batch),
//! `write.rs` (sending its outputs and entries, under either guarantee), `persist.rs` (expiring, logging and persisting its changes),
//! `reconcile.rs` (where the group hands the partition over and how sled is brought up
//! to it), `restore.rs` (reading the changelog back), `gap_timer.rs` (control records
//! for open gaps), [`order`] (offset order of deliveries), [`gaps`], [`commit`],
//! [`retry`].

pub mod commit;
pub mod gaps;
pub mod holes;
pub mod io;
pub mod lifecycle;
pub mod order;
pub mod queue;
pub mod retry;
mod rewind;
pub mod txn;
pub mod worker;

#[path = "batch.rs"]
mod batch;
#[cfg(test)]
mod changelog_tests;
mod epoch;
#[cfg(test)]
mod epoch_tests;
#[path = "gap_timer.rs"]
mod gap_timer;
#[cfg(test)]
mod memory;
#[path = "persist.rs"]
mod persist;
#[path = "reconcile.rs"]
mod reconcile;
#[cfg(test)]
mod redrive_tests;
#[path = "restore.rs"]
mod restore;
#[cfg(test)]
mod tests;
#[path = "write.rs"]
mod write;

use std::time::Duration;

use crate::config::{ProcessingConfig, ProcessorConfig, PAYMENTS_STORE, POLICIES_STORE};
use crate::metrics::Metrics;
use crate::rules::fold::FoldSettings;
use crate::rules::input::BodyFields;
use crate::store::{Flusher, Store};
use crate::trace::RecordTracer;
pub use retry::Stopped;

/// Which fold a worker runs: the processor's two stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The raw topic, keyed by payment: dedup, per-payment order, and requests to the
    /// policy stage ([`crate::rules::decide`]).
    Payments,
    /// The repartition topic, keyed by policy: which payment holds each policy
    /// ([`crate::rules::policy`]).
    Policies,
}

impl Stage {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Payments => "payments",
            Stage::Policies => "policies",
        }
    }
}

/// What a worker needs from the processor's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The payment stage's input.
    pub raw_topic: String,
    /// The policy stage's input, the repartition topic.
    pub requests_topic: String,
    /// The stages' changelogs ([`crate::store::changelog`]).
    pub payments_changelog: String,
    pub policies_changelog: String,
    pub processing: ProcessingConfig,
    /// What the folds depend on, built once from `processing` and the body fields.
    pub fold: FoldSettings,
    /// The group's session timeout: revoked workers get half of it to hand over.
    pub session_timeout: Duration,
}

impl From<&ProcessorConfig> for Settings {
    fn from(c: &ProcessorConfig) -> Self {
        Self {
            raw_topic: c.kafka.raw_topic.clone(),
            requests_topic: c.kafka.requests_topic(),
            payments_changelog: c.kafka.changelog_topic(PAYMENTS_STORE),
            policies_changelog: c.kafka.changelog_topic(POLICIES_STORE),
            processing: c.processing.clone(),
            fold: fold_settings(&c.processing, c.fields.clone()),
            session_timeout: c.kafka.session_timeout,
        }
    }
}

/// What the stages' folds depend on ([`crate::rules::fold`]), from the processing
/// settings and the body fields.
pub fn fold_settings(p: &ProcessingConfig, fields: BodyFields) -> FoldSettings {
    FoldSettings::new(
        fields,
        p.limits(),
        p.dedup_window,
        p.refund_window,
        p.max_record_time_ahead,
    )
}

/// Under exactly-once, each stage's gate to its transaction ([`txn`]); none at least
/// once.
#[derive(Debug, Default, Clone)]
pub struct Gates {
    pub payments: Option<std::sync::Arc<txn::TxnGate>>,
    pub policies: Option<std::sync::Arc<txn::TxnGate>>,
}

impl Gates {
    /// A gate per stage.
    pub fn exactly_once() -> Self {
        Self {
            payments: Some(Default::default()),
            policies: Some(Default::default()),
        }
    }

    pub fn of(&self, stage: Stage) -> Option<&std::sync::Arc<txn::TxnGate>> {
        match stage {
            Stage::Payments => self.payments.as_ref(),
            Stage::Policies => self.policies.as_ref(),
        }
    }
}

/// What every worker of the instance shares.
#[allow(missing_debug_implementations)] // handles to sled, the backend and metrics
pub struct Context<B> {
    pub settings: Settings,
    pub store: Store,
    /// Group commit of sled to disk.
    pub flusher: Flusher,
    pub backend: B,
    pub metrics: Metrics,
    pub tracer: RecordTracer,
    /// Rebuilds on assignment that may read the log at once
    /// (`processing.max_concurrent_rebuilds`).
    pub rebuilds: tokio::sync::Semaphore,
    /// Partitions stopped at a hole in their log, shared with the admin API.
    pub holes: std::sync::Arc<holes::Holes>,
    /// The stages' transactions (exactly-once), or none (at least once).
    pub gates: Gates,
}

impl Settings {
    /// The input topic of `stage`.
    pub fn topic(&self, stage: Stage) -> &str {
        match stage {
            Stage::Payments => &self.raw_topic,
            Stage::Policies => &self.requests_topic,
        }
    }

    /// The changelog topic of `stage`'s store.
    pub fn changelog(&self, stage: Stage) -> &str {
        match stage {
            Stage::Payments => &self.payments_changelog,
            Stage::Policies => &self.policies_changelog,
        }
    }
}
