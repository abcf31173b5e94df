//! Where the group hands a newly assigned partition over, and how sled is brought up to
//! that point; and folding a range of the partition read from the log on its own.
//!
//! Before its first live record, the worker restores sled from the partition's
//! changelog (`restore.rs`: a new instance, a wiped or lost state directory, a partition
//! another instance held meanwhile), then compares the applied offset with the first
//! offset the group hands it:
//! - state behind (the changelog does not cover everything: written by a version
//!   without changelogs, or lost): the missing range is rebuilt by replaying the input
//!   partition with outputs suppressed — those records are below the committed offset,
//!   so their outputs were already acknowledged;
//! - sled ahead (a crash after persisting, before committing): records it already
//!   applied are skipped, and the group's offset is moved up to what sled covers, so a
//!   quiet partition does not stay behind;
//! - the group's offset inside a replay mark the changelog records (`processor replay`
//!   moved it back on a log that no longer starts at 0): the state is kept, and the
//!   records up to the mark's end are decided again against it;
//! - otherwise the group's offset below the highest one this instance committed itself:
//!   `processor replay` moved it back, so the partition's state is dropped (a reset
//!   entry voids it in the changelog too) and rebuilt from the input log up to the new
//!   offset, and records from there on are decided again, their outputs published again.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::io::{Backend, LogReader, Position};
use super::rewind::Rewinding;
use super::worker::{Mode, Worker};
use super::Stopped;

impl<B: Backend> Worker<B> {
    /// The group's offset `committed` is inside a replay in place the changelog records:
    /// keep the state and decide again up to its end. Otherwise, when the group was moved
    /// back behind `committed_mark`, what this instance itself committed, drop the
    /// partition's state.
    async fn replay_or_drop(
        &mut self,
        committed: i64,
        committed_mark: Option<i64>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        let store = self.store.clone();
        let replay = self.retry("store", stop, || async { store.replay_mark() }).await?;
        if let Some(m) = replay.filter(|m| m.covers(committed)) {
            tracing::warn!(
                partition = self.partition,
                committed,
                until = m.until,
                "the group's offset was moved back (processor replay): the state is kept and the records up \
                 to `until` are decided again against it; each one already applied sends again what it sent"
            );
            self.replay_until = Some(m.until);
            cx.metrics.replays_detected.inc();
            return Ok(());
        }
        self.drop_if_replayed(committed, committed_mark, stop).await
    }

    /// When the group was moved back behind `mark`, what this instance itself committed
    /// (`processor replay`), drop the partition's state.
    async fn drop_if_replayed(
        &mut self,
        committed: i64,
        mark: Option<i64>,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        if let Some(mark) = mark.filter(|m| committed < *m) {
            tracing::warn!(
                partition = self.partition,
                committed,
                previously_committed = mark,
                "the group's offset was moved back (processor replay): rebuilding the partition's state \
                 from the log; records from the new offset on are decided and their outputs published again"
            );
            self.reset(stop).await?;
            cx.metrics.replays_detected.inc();
        }
        Ok(())
    }

    /// Bring sled up to `position`, the first offset the group hands us (see the module
    /// doc), and set where live records start.
    pub(super) async fn reconcile(&mut self, position: Position, stop: &CancellationToken) -> Result<(), Stopped> {
        let store = self.store.clone();
        let first_live = position.offset();
        if self.gate.is_some() {
            self.discard_uncommitted(stop).await?;
        }
        // Read before the restore: a reset entry it meets clears the mark with the state.
        let mark = self.retry("store", stop, || async { store.committed_mark() }).await?;
        let restored = self.restore(stop).await?;
        if self.gate.is_none() && !self.claim(restored, stop).await? {
            return Ok(());
        }
        self.replay_until = None;
        if let Position::Committed(committed) = position {
            self.replay_or_drop(committed, mark, stop).await?;
        }
        let applied = self.retry("store", stop, || async { store.applied_offset() }).await?;
        // With no state at all but a committed offset, every record below the log start
        // was decided once and is now gone: a hole as much as one above a state.
        let known = match position {
            Position::Committed(_) => applied.or(Some(-1)),
            Position::LogStart(_) => applied,
        };
        let start = self.check_hole(known, stop).await?;
        // Below the log start the group itself starts at the log start.
        let first_live = first_live.max(start);
        let from = match applied {
            Some(a) if a + 1 >= first_live => None,
            Some(a) => Some((a + 1).max(start)),
            None => Some(-1),
        };
        if let Some(from) = from {
            self.rebuild(from, first_live, stop).await?;
        }
        self.watch_stored_gaps(stop).await?;
        let applied = self.retry("store", stop, || async { store.applied_offset() }).await?;
        self.set_start(position, applied, first_live);
        Ok(())
    }

    /// Under exactly-once, sled holding writes past the last commit (a crash mid
    /// transaction) is a cache that may be ahead of the log: drop it, and restore the
    /// committed state from the changelog.
    async fn discard_uncommitted(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let store = self.store.clone();
        let holds = self
            .retry("store", stop, || async { store.holds_uncommitted() })
            .await?;
        if holds {
            tracing::warn!(
                stage = self.stage.as_str(),
                partition = self.partition,
                "the local state holds writes of a transaction that may not have committed; \
                 restoring the committed state from the changelog"
            );
            self.retry("store", stop, || async { store.discard_state() }).await?;
        }
        Ok(())
    }

    /// Fold the log from `from` up to `until` with outputs suppressed. A reader's
    /// pre-fetch and a partition's batch per rebuild at once: with two stages an instance
    /// may be assigned dozens of partitions to rebuild together.
    async fn rebuild(&mut self, from: i64, until: i64, stop: &CancellationToken) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        let _permit = tokio::select! {
            p = cx.rebuilds.acquire() => p.ok(),
            () = stop.cancelled() => return Err(Stopped),
        };
        let started = Instant::now();
        let n = self.read_range(from, until, Mode::Rebuild, stop).await?;
        if n > 0 {
            tracing::info!(
                partition = self.partition,
                records = n,
                from,
                until,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rebuilt partition state from the log"
            );
        }
        Ok(())
    }

    /// Where live records start, once sled covers everything below `first_live`: at the
    /// group's offset for a replay in place, else past what sled covers (committing it
    /// when sled is ahead of the group).
    fn set_start(&mut self, position: Position, applied: Option<i64>, first_live: i64) {
        if let Some(until) = self.replay_until {
            // A replay in place: decide again from the group's offset.
            self.next_offset = Some(first_live);
            tracing::info!(
                partition = self.partition,
                from = first_live,
                until,
                "replaying in place"
            );
            return;
        }
        if let Some(a) = applied.filter(|a| *a >= first_live) {
            // sled is ahead of the group: commit what it already covers.
            self.commits.applied(Some(a));
            self.commit();
        }
        self.next_offset = Some(applied.map_or(first_live, |a| (a + 1).max(first_live)));
        tracing::info!(
            stage = self.stage.as_str(),
            partition = self.partition,
            ?position,
            applied,
            next = self.next_offset,
            "partition reconciled with the group's offset"
        );
    }

    /// The first offset the log still has. When records above the applied offset are
    /// gone from it (a hole), the partition waits, loudly, until an operator
    /// acknowledges the hole ([`super::holes`]); the acknowledgement is remembered, so a
    /// restart does not ask again.
    async fn check_hole(&mut self, applied: Option<i64>, stop: &CancellationToken) -> Result<i64, Stopped> {
        let cx = self.cx.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        let start = self
            .retry("log", stop, || cx.backend.log_start(&topic, partition))
            .await?;
        let store = self.store.clone();
        let marker = self.retry("store", stop, || async { store.marker_follows() }).await?;
        // The applied record's commit marker is no record: a log that starts after it
        // lost nothing.
        let next = applied.map(|a| a + 1 + i64::from(marker));
        let Some(a) = applied.filter(|_| next.is_some_and(|n| start > n)) else {
            return Ok(start);
        };
        let store = self.store.clone();
        let acked = self
            .retry("store", stop, || async { store.hole_acknowledged() })
            .await?;
        if acked.is_some_and(|s| s >= start) {
            return Ok(start);
        }
        tracing::error!(
            topic,
            partition,
            applied = a,
            log_start = start,
            "records {}..{} of the partition are gone from the log; the partition stops until the hole is \
             acknowledged (POST /holes/{topic}/{partition}/acknowledge): nothing is skipped silently",
            a + 1,
            start - 1
        );
        cx.holes.report(&topic, partition, a, start);
        cx.metrics.partition_holes.inc();
        while !cx.holes.is_acknowledged(&topic, partition) {
            let stopped = tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => false,
                () = stop.cancelled() => true,
            };
            if stopped {
                cx.holes.remove(&topic, partition);
                cx.metrics.partition_holes.dec();
                return Err(Stopped);
            }
        }
        cx.holes.remove(&topic, partition);
        cx.metrics.partition_holes.dec();
        self.retry("store", stop, || async { store.record_hole_ack(start) })
            .await?;
        tracing::warn!(
            topic,
            partition,
            skipped_from = a + 1,
            skipped_to = start - 1,
            "hole acknowledged; going on from the log start"
        );
        Ok(start)
    }

    /// Watch the gaps of every stored payment that holds events.
    pub(super) async fn watch_stored_gaps(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let store = self.store.clone();
        let gapped = self
            .retry("store", stop, || async { store.payments_with_gaps() })
            .await?;
        for st in gapped {
            self.gaps.watch(&st.key(), st.next_sequence, st.held.len() as i64);
        }
        self.update_held_gauge();
        Ok(())
    }

    /// Fold records `[from, until)` read from the log (`from` -1: the start of the
    /// retained log), in batches. Returns how many were read.
    pub(super) async fn read_range(
        &mut self,
        from: i64,
        until: i64,
        mode: Mode,
        stop: &CancellationToken,
    ) -> Result<u64, Stopped> {
        let cx = self.cx.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        let start = (from >= 0).then_some(from);
        let mut reader = self
            .retry("log", stop, || async { cx.backend.open(&topic, partition, start) })
            .await?;
        let max = cx.settings.processing.max_batch_records.max(1);
        let max_bytes = cx.settings.processing.max_batch_bytes;
        let mut n = 0u64;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut last = -1;
        while last + 1 < until {
            let m = tokio::select! {
                m = reader.next() => m,
                () = stop.cancelled() => return Err(Stopped),
            };
            let m = match m {
                Ok(Some(m)) => m,
                // At the end for now: what `until` still lacks is being written.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "reading the log failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        () = stop.cancelled() => return Err(Stopped),
                    }
                }
            };
            last = m.record.origin.offset;
            if last >= until {
                break;
            }
            bytes += m.record.size_bytes();
            batch.push(m);
            if batch.len() >= max || bytes >= max_bytes || last + 1 >= until {
                n += batch.len() as u64;
                bytes = 0;
                self.fold(&std::mem::take(&mut batch), mode, stop).await?;
                if self.rewinding == Rewinding::Again {
                    // The rewind under way starts over; it reads this range again.
                    return Ok(n);
                }
            }
        }
        if !batch.is_empty() {
            n += batch.len() as u64;
            self.fold(&batch, mode, stop).await?;
        }
        if mode == Mode::Rebuild {
            self.retry("store", stop, || cx.flusher.flush()).await?;
        }
        Ok(n)
    }
}
