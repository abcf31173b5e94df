//! Restoring a partition's state from its changelog ([`crate::store::changelog`]).
//!
//! sled is a cache: on assignment, whatever it lacks of the changelog is read back
//! (everything, when the directory is new, wiped or was last written by a version
//! without changelogs; the tail, when another instance held the partition meanwhile).
//! It is read `read_committed` to its current end (under exactly-once an aborted
//! transaction's entries never existed). Only entries up to the last meta or reset
//! entry are applied: anything after it is a batch whose writer stopped half-way (at
//! least once), and its records are decided again. At least once, entries of an older
//! writer epoch after a newer claim are ignored, and their keys handed back to be
//! written again by the new owner ([`super::epoch`]). The raw log is read only for what
//! the changelog does not cover.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::io::{Backend, Incoming, LogReader};
use super::worker::Worker;
use super::Stopped;
use crate::store::changelog::{claimed_epoch, epoch_of, reset_entry, META, REPLAY, RESET};
use crate::store::{Entry, StoreError};

/// Entries applied to sled per atomic batch while restoring, at most (a chunk ends at the
/// first batch boundary past either bound)...
const RESTORE_CHUNK: usize = 2_000;
/// ...and their bytes: a payment's entry can be MiBs (its held events), 2,000 of them GBs.
const RESTORE_CHUNK_BYTES: usize = 8 << 20;

/// What a restore found.
#[derive(Debug, Default)]
pub(super) struct Restored {
    /// The changelog offset after the last record read: a writer's first entry must
    /// land there, or another writer came in between.
    pub(super) end: i64,
    /// The highest writer epoch seen, claims included.
    pub(super) epoch: Option<u64>,
    /// Keys an older epoch wrote after a newer claim (ignored): the new owner writes
    /// them again, so that compaction never keeps the ignored version alone.
    pub(super) stale: BTreeSet<Vec<u8>>,
}

/// The writer epochs of a changelog as a restore meets them.
struct Epochs {
    current: Option<u64>,
    stale: BTreeSet<Vec<u8>>,
}

impl Epochs {
    /// Whether the record with `key` and `headers` is applied; a claim is not an entry
    /// but moves the epoch on and voids `pending` (a batch its writer never closed).
    fn admit(&mut self, key: &[u8], headers: &[hookstream_schemas::KafkaHeader], pending: &mut Vec<Entry>) -> bool {
        if let Some(e) = claimed_epoch(key) {
            if self.current.is_none_or(|c| e > c) {
                pending.clear();
                self.current = Some(e);
            }
            return false;
        }
        match (epoch_of(headers), self.current) {
            (Some(e), Some(c)) if e < c => {
                self.stale.insert(key.to_vec());
                false
            }
            (Some(e), _) => {
                self.current = Some(self.current.map_or(e, |c| c.max(e)));
                true
            }
            (None, _) => true,
        }
    }
}

fn is_boundary(m: &Incoming) -> bool {
    matches!(m.record.key.as_deref(), Some(k) if k == META || k == RESET || k == REPLAY)
}

impl<B: Backend> Worker<B> {
    /// Bring sled up to the last complete batch of the partition's changelog, at most
    /// `max_concurrent_rebuilds` partitions at once (each reader has its pre-fetch).
    pub(super) async fn restore(&mut self, stop: &CancellationToken) -> Result<Restored, Stopped> {
        let cx = self.cx.clone();
        let _permit = tokio::select! {
            p = cx.rebuilds.acquire() => p.ok(),
            () = stop.cancelled() => return Err(Stopped),
        };
        self.restore_now(stop).await
    }

    /// [`Worker::restore`] without waiting for a turn: for a partition that already
    /// holds one (its stored state turned out not to read back while it rebuilt).
    pub(super) async fn restore_now(&mut self, stop: &CancellationToken) -> Result<Restored, Stopped> {
        let cx = self.cx.clone();
        let topic = cx.settings.changelog(self.stage).to_owned();
        let partition = self.partition;
        let start = self
            .retry("changelog", stop, || cx.backend.log_start(&topic, partition))
            .await?;
        let end = self
            .retry("changelog", stop, || cx.backend.log_end(&topic, partition))
            .await?;
        let store = self.store.clone();
        let next = self.retry("store", stop, || async { store.changelog_next() }).await?;
        let epoch = self.retry("store", stop, || async { store.writer_epoch() }).await?;
        let unchanged = Restored {
            end,
            epoch,
            ..Restored::default()
        };
        if next == Some(end) {
            return Ok(unchanged);
        }
        let from = self.restore_from(&topic, start..end, next, stop).await?;
        if from >= end {
            return Ok(unchanged);
        }
        let started = Instant::now();
        let mut epochs = Epochs {
            current: if from == start { None } else { epoch },
            stale: BTreeSet::new(),
        };
        match self.apply_changelog(&topic, from, &mut epochs, stop).await? {
            Ok((0, _, read_to)) => Ok(Restored {
                end: read_to,
                ..unchanged
            }),
            Ok((n, until, read_to)) => {
                self.retry("store", stop, || cx.flusher.flush()).await?;
                tracing::info!(
                    stage = self.stage.as_str(),
                    partition,
                    records = n,
                    from,
                    until,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "restored partition state from the changelog"
                );
                self.keep_epochs(epochs, read_to, stop).await
            }
            Err(e) => {
                // The changelog holds a value this version cannot read: void it, and
                // rebuild from the raw log instead.
                tracing::error!(partition, changelog = %topic, error = ?e,
                    "the changelog does not read back; rebuilding the partition from its input log");
                cx.metrics.corrupt_rebuilds.inc();
                self.reset(stop).await?;
                // Read what is left (the reset entry on): it is what the next writer
                // must follow.
                Box::pin(self.restore_now(stop)).await
            }
        }
    }

    /// Where in the changelog (`log`: its retained range) the restore starts: at sled's
    /// next offset when it lies in the range, else at the start, with sled cleared when
    /// it reflects nothing the changelog has (or something it no longer has).
    async fn restore_from(
        &mut self,
        topic: &str,
        log: std::ops::Range<i64>,
        next: Option<i64>,
        stop: &CancellationToken,
    ) -> Result<i64, Stopped> {
        if let Some(n) = next.filter(|n| log.contains(n)) {
            return Ok(n);
        }
        let store = self.store.clone();
        let applied = self.retry("store", stop, || async { store.applied_offset() }).await?;
        if applied.is_some() || next.is_some() {
            tracing::warn!(partition = self.partition, changelog = %topic, "local state is not in the changelog; restoring from the changelog");
            self.retry("store", stop, || async { store.clear() }).await?;
        }
        Ok(log.start)
    }

    /// After a restore that read entries: the writer epoch the changelog ends with, and
    /// the keys a previous owner wrote after it lost the partition (ignored, and written
    /// again by the caller).
    async fn keep_epochs(
        &mut self,
        epochs: Epochs,
        read_to: i64,
        stop: &CancellationToken,
    ) -> Result<Restored, Stopped> {
        let store = self.store.clone();
        if let Some(e) = epochs.current {
            self.retry("store", stop, || async { store.set_writer_epoch(e, None) })
                .await?;
        }
        if !epochs.stale.is_empty() {
            tracing::warn!(
                stage = self.stage.as_str(),
                partition = self.partition,
                keys = epochs.stale.len(),
                "the changelog holds entries a previous owner wrote after it lost the partition; \
                 they are ignored, and their keys written again"
            );
        }
        Ok(Restored {
            end: read_to,
            epoch: epochs.current,
            stale: epochs.stale,
        })
    }

    /// Void the partition's state in the changelog and in sled (a replay, a changelog
    /// that does not read back): the state is then rebuilt from the input log.
    pub(super) async fn reset(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        let topic = cx.settings.changelog(self.stage);
        let reset = [reset_entry()];
        match self.gate.clone() {
            // Under exactly-once in the stage's transaction; a failed write fails it
            // and is written again in the next one.
            Some(gate) => loop {
                let inside = tokio::select! {
                    i = gate.enter_write() => i,
                    () = stop.cancelled() => return Err(Stopped),
                };
                match cx.backend.append(topic, self.partition, None, &reset).await {
                    Ok(_) => {
                        gate.wrote(self.partition);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(partition = self.partition, error = %e, "the reset entry was not written; retrying");
                        gate.fail(self.partition);
                        drop(inside);
                    }
                }
            },
            None => {
                let epoch = self.writer.map(|w| w.epoch);
                self.retry("changelog", stop, || {
                    cx.backend.append(topic, self.partition, epoch, &reset)
                })
                .await?;
            }
        }
        let store = self.store.clone();
        self.retry("store", stop, || async { store.clear() }).await
    }

    /// Apply the changelog's entries from `from` to its current end to sled, in atomic
    /// chunks that each end at a meta or reset entry; entries after the last one (a batch
    /// whose writer stopped half-way, at least once) are not applied. How many records
    /// were read, the offset after the last boundary and the offset after the last
    /// record, or the error of an entry that does not read back.
    async fn apply_changelog(
        &self,
        topic: &str,
        from: i64,
        epochs: &mut Epochs,
        stop: &CancellationToken,
    ) -> Result<Result<(u64, i64, i64), StoreError>, Stopped> {
        let mut ready: Vec<Entry> = Vec::with_capacity(RESTORE_CHUNK);
        let mut pending: Vec<Entry> = Vec::new();
        let mut ready_bytes = 0usize;
        let mut boundary = None;
        let mut n = 0u64;
        let mut read_to = from;
        let mut failed = None;
        let store = self.store.clone();
        let restored = self.cx.metrics.restored_records.clone();
        self.read_changelog(topic, from, stop, |m| {
            n += 1;
            restored.inc();
            read_to = m.record.origin.offset + 1;
            if failed.is_some() {
                return;
            }
            let Some(key) = m.record.key.clone() else { return };
            if !epochs.admit(&key, &m.record.headers, &mut pending) {
                return;
            }
            if key == REPLAY {
                // Written by `processor replay` with the group stopped: a batch before it
                // that did not close was never finished, and its records are decided again.
                pending.clear();
            }
            ready_bytes += m.record.size_bytes();
            pending.push(Entry {
                key,
                value: m.record.value.clone(),
            });
            if is_boundary(m) {
                ready.append(&mut pending);
                boundary = Some(m.record.origin.offset);
                if ready.len() >= RESTORE_CHUNK || ready_bytes >= RESTORE_CHUNK_BYTES {
                    ready_bytes = 0;
                    if let Err(e) = store.restore(&std::mem::take(&mut ready), m.record.origin.offset + 1) {
                        failed = Some(e);
                    }
                }
            }
        })
        .await?;
        if let (None, Some(b)) = (&failed, boundary) {
            if let Err(e) = store.restore(&ready, b + 1) {
                failed = Some(e);
            }
        }
        if !pending.is_empty() {
            tracing::warn!(
                partition = self.partition,
                changelog = topic,
                entries = pending.len(),
                "the changelog ends with a batch its writer did not finish; its records are decided again"
            );
        }
        Ok(failed.map_or(Ok((n, boundary.map_or(from, |b| b + 1), read_to)), Err))
    }

    /// Read the changelog's records from `from` to its current end in order, handing
    /// each to `each`.
    async fn read_changelog(
        &self,
        topic: &str,
        from: i64,
        stop: &CancellationToken,
        mut each: impl FnMut(&Incoming),
    ) -> Result<(), Stopped> {
        let cx = &self.cx;
        let partition = self.partition;
        let mut reader = self
            .retry("changelog", stop, || async {
                cx.backend.open(topic, partition, Some(from))
            })
            .await?;
        loop {
            let m = tokio::select! {
                m = reader.next() => m,
                () = stop.cancelled() => return Err(Stopped),
            };
            match m {
                Ok(Some(m)) => each(&m),
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(partition, changelog = topic, error = %e, "reading the changelog failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = stop.cancelled() => return Err(Stopped),
                    }
                }
            }
        }
    }
}
