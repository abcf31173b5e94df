//! The end of a batch: forgetting what is past its time and applying the changes to
//! sled (they are logged to the changelog by `write.rs` and `epoch.rs`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::io::Backend;
use super::retry::{error_chain, Failure};
use super::worker::{Mode, Worker};
use super::Stopped;
use crate::rules::retention;
use crate::store::{Changes, Entry, PartitionStore, StoreError};

/// Why a batch's changes did not reach sled.
#[derive(Debug, thiserror::Error)]
enum PersistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task that writes to sled panicked or was cancelled.
    #[error("the write to sled did not finish")]
    Task(#[source] tokio::task::JoinError),
}

impl Failure for PersistError {
    fn is_transient(&self) -> bool {
        match self {
            PersistError::Store(e) => e.is_transient(),
            PersistError::Task(_) => false,
        }
    }
    fn chain(&self) -> String {
        error_chain(self)
    }
}

/// Expired dedup keys removed per batch: a partition that comes back after a long
/// quiet time catches up over its next batches instead of in one huge one.
const MAX_EXPIRED_PER_BATCH: usize = 10_000;

impl<B: Backend> Worker<B> {
    /// Remove with the batch what is past its time at the partition's clock after it
    /// (the fold already forgets it): dedup keys, the batch's own and at most
    /// [`MAX_EXPIRED_PER_BATCH`] stored ones, and as many payment and policy states
    /// that the batch did not change.
    pub(super) async fn expire(&self, changes: &mut Changes, stop: &CancellationToken) -> Result<(), Stopped> {
        let Some(now) = changes.max_ts else { return Ok(()) };
        let window_ms = i64::try_from(self.cx.settings.processing.dedup_window.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now.saturating_sub(window_ms);
        changes.dedup.retain(|_, e| e.first_seen_ms >= cutoff);
        let store = self.store.clone();
        let expired = self
            .retry("store", stop, || async {
                store.expired_dedup(cutoff, MAX_EXPIRED_PER_BATCH)
            })
            .await?;
        changes.set_expired(expired);
        // States the batch changed and that are past their time already (changed early
        // in a long batch) go now, as they would have with smaller batches.
        let gone = |at: Option<i64>| retention::is_expired(at, now);
        let mut evicted: Vec<Vec<u8>> = Vec::new();
        changes.payments.retain(|k, st| {
            let keep = !gone(st.evict_at_ms);
            if !keep {
                evicted.push(PartitionStore::payment_key(k));
            }
            keep
        });
        changes.policies.retain(|k, st| {
            let keep = !gone(st.evict_at_ms);
            if !keep {
                evicted.push(PartitionStore::policy_key(k));
            }
            keep
        });
        let due = self
            .retry("store", stop, || async {
                store.due_evictions(now, MAX_EXPIRED_PER_BATCH)
            })
            .await?;
        // A stored state the batch changed is replaced, not evicted.
        let changed = |k: &[u8]| match k.split_first() {
            Some((b'p', id)) => changes.payments.contains_key(String::from_utf8_lossy(id).as_ref()),
            Some((b'P', id)) => changes.policies.contains_key(String::from_utf8_lossy(id).as_ref()),
            _ => false,
        };
        let already: std::collections::HashSet<Vec<u8>> = evicted.iter().cloned().collect();
        let stored: Vec<Vec<u8>> = due
            .into_iter()
            .filter(|k| !changed(k) && !already.contains(k))
            .collect();
        evicted.extend(stored);
        changes.evicted = evicted;
        Ok(())
    }

    /// Apply `changes` (their values as serialized for the changelog: `entries`) in one
    /// atomic sled batch with the changelog position it reflects,
    /// then, for live records, wait until it is on disk. A rebuild does not wait per
    /// batch: its records are below the committed offset, so losing the unflushed part
    /// only means rebuilding it again; it flushes once at its end
    /// ([`Worker::read_range`]). Waiting per batch made a rebuild's speed depend on how
    /// many partitions shared each flush.
    pub(super) async fn persist(
        &self,
        changes: Changes,
        entries: Vec<Entry>,
        changelog_next: Option<i64>,
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let cx = &self.cx;
        let batch = Arc::new((changes, entries));
        self.retry("store", stop, || {
            let (store, batch) = (self.store.clone(), batch.clone());
            async move {
                tokio::task::spawn_blocking(move || store.persist(&batch.0, &batch.1, changelog_next))
                    .await
                    .map_err(PersistError::Task)?
                    .map_err(PersistError::Store)
            }
        })
        .await?;
        match mode {
            // Under exactly-once sled is a cache of the changelog (what it holds past the
            // last commit is discarded after a crash): no flush per batch.
            Mode::Live if self.gate.is_none() => self.retry("store", stop, || cx.flusher.flush()).await,
            Mode::Live | Mode::Rebuild => Ok(()),
        }
    }
}
