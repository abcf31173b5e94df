//! Restoring a partition's state from its changelog ([`crate::store::changelog`]).
//!
//! sled is a cache: on assignment, whatever it lacks of the changelog is read back
//! (everything, when the directory is new, wiped or was last written by a version
//! without changelogs; the tail, when another instance held the partition meanwhile).
//! Only entries up to the changelog's last meta or reset entry are applied: anything
//! after it is a batch whose writer stopped half-way, and its records are decided
//! again. The raw log is read only for what the changelog does not cover.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::io::{Backend, Incoming, LogReader};
use super::worker::Worker;
use super::Stopped;
use crate::store::changelog::{reset_entry, META, RESET};
use crate::store::{Entry, StoreError};

/// Entries applied to sled per atomic batch while restoring.
const RESTORE_CHUNK: usize = 2_000;

fn is_boundary(m: &Incoming) -> bool {
    matches!(m.record.key.as_deref(), Some(k) if k == META || k == RESET)
}

impl<B: Backend> Worker<B> {
    /// Bring sled up to the last complete batch of the partition's changelog, at most
    /// `max_concurrent_rebuilds` partitions at once (each reader has its pre-fetch).
    pub(super) async fn restore(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        let _permit = tokio::select! {
            p = cx.rebuilds.acquire() => p.ok(),
            () = stop.cancelled() => return Err(Stopped),
        };
        self.restore_now(stop).await
    }

    /// [`Worker::restore`] without waiting for a turn: for a partition that already
    /// holds one (its stored state turned out not to read back while it rebuilt).
    pub(super) async fn restore_now(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        let topic = cx.settings.changelog(self.stage).to_owned();
        let partition = self.partition;
        let start = cx
            .retry("changelog", stop, || cx.backend.log_start(&topic, partition))
            .await?;
        let end = cx
            .retry("changelog", stop, || cx.backend.log_end(&topic, partition))
            .await?;
        let store = self.store.clone();
        let next = cx.retry("store", stop, || async { store.changelog_next() }).await?;
        let from = match next {
            Some(n) if n == end => return Ok(()),
            Some(n) if (start..end).contains(&n) => n,
            _ => {
                // sled reflects nothing the changelog has (or something it no longer
                // has): start from the changelog alone.
                let applied = cx.retry("store", stop, || async { store.applied_offset() }).await?;
                if applied.is_some() || next.is_some() {
                    tracing::warn!(partition, changelog = %topic, "local state is not in the changelog; restoring from the changelog");
                    cx.retry("store", stop, || async { store.clear() }).await?;
                }
                start
            }
        };
        if from >= end {
            return Ok(());
        }
        let Some(limit) = self.last_boundary(&topic, from, end, stop).await? else {
            return Ok(());
        };
        let started = Instant::now();
        match self.apply_changelog(&topic, from, limit, stop).await? {
            Ok(n) => {
                cx.retry("store", stop, || cx.flusher.flush()).await?;
                tracing::info!(
                    stage = self.stage.as_str(),
                    partition,
                    records = n,
                    from,
                    until = limit + 1,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "restored partition state from the changelog"
                );
            }
            Err(e) => {
                // The changelog holds a value this version cannot read: void it, and
                // rebuild from the raw log instead.
                tracing::error!(partition, changelog = %topic, error = ?e,
                    "the changelog does not read back; rebuilding the partition from its input log");
                cx.metrics.corrupt_rebuilds.inc();
                self.reset(stop).await?;
            }
        }
        Ok(())
    }

    /// Void the partition's state in the changelog and in sled (a replay, a changelog
    /// that does not read back): the state is then rebuilt from the input log.
    pub(super) async fn reset(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        let topic = cx.settings.changelog(self.stage);
        let reset = [reset_entry()];
        cx.retry("changelog", stop, || cx.backend.append(topic, self.partition, &reset))
            .await?;
        let store = self.store.clone();
        cx.retry("store", stop, || async { store.clear() }).await
    }

    /// The offset of the last meta or reset entry in `[from, end)`, `None` if none.
    /// Usually the last record itself; after a writer stopped half-way, a scan.
    async fn last_boundary(
        &self,
        topic: &str,
        from: i64,
        end: i64,
        stop: &CancellationToken,
    ) -> Result<Option<i64>, Stopped> {
        let tail = self.boundary_in(topic, end - 1, end - 1, stop).await?;
        if tail.is_some() || end - 1 <= from {
            return Ok(tail);
        }
        tracing::warn!(
            partition = self.partition,
            changelog = topic,
            "the changelog ends with a batch its writer did not finish; looking for the last complete one"
        );
        self.boundary_in(topic, from, end - 1, stop).await
    }

    /// The last meta or reset entry in `[from, until]`.
    async fn boundary_in(
        &self,
        topic: &str,
        from: i64,
        until: i64,
        stop: &CancellationToken,
    ) -> Result<Option<i64>, Stopped> {
        let mut last = None;
        self.read_changelog(topic, from, until, stop, |m| {
            if is_boundary(m) {
                last = Some(m.record.origin.offset);
            }
        })
        .await?;
        Ok(last)
    }

    /// Apply the changelog's entries `[from, limit]` to sled in atomic chunks; how many
    /// records were read, or the error of an entry that does not read back.
    async fn apply_changelog(
        &self,
        topic: &str,
        from: i64,
        limit: i64,
        stop: &CancellationToken,
    ) -> Result<Result<u64, StoreError>, Stopped> {
        let mut chunk: Vec<Entry> = Vec::with_capacity(RESTORE_CHUNK);
        let mut n = 0u64;
        let mut failed = None;
        let store = self.store.clone();
        let restored = self.cx.metrics.restored_records.clone();
        self.read_changelog(topic, from, limit, stop, |m| {
            n += 1;
            restored.inc();
            if failed.is_some() {
                return;
            }
            if let Some(key) = m.record.key.clone() {
                chunk.push(Entry {
                    key,
                    value: m.record.value.clone(),
                });
            }
            let offset = m.record.origin.offset;
            if chunk.len() >= RESTORE_CHUNK || offset >= limit {
                if let Err(e) = store.restore(&std::mem::take(&mut chunk), offset + 1) {
                    failed = Some(e);
                }
            }
        })
        .await?;
        Ok(failed.map_or(Ok(n), Err))
    }

    /// Read the changelog's records `[from, until]` in order, handing each to `each`.
    async fn read_changelog(
        &self,
        topic: &str,
        from: i64,
        until: i64,
        stop: &CancellationToken,
        mut each: impl FnMut(&Incoming),
    ) -> Result<(), Stopped> {
        let cx = &self.cx;
        let partition = self.partition;
        let mut reader = cx
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
                Ok(m) if m.record.origin.offset > until => return Ok(()),
                Ok(m) => {
                    each(&m);
                    if m.record.origin.offset >= until {
                        return Ok(());
                    }
                }
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
