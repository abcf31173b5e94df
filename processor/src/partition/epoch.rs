//! At least once, who may write a partition's changelog: the writer epoch.
//!
//! Without transactions nothing stops a previous owner (paused past its session timeout
//! by a GC, a stopped VM, a long fsync, then resumed with records queued) from writing
//! entries after the new owner's, and a compacted changelog keeps the last version of a
//! key. So each owner, once its restore has read the changelog to its end, claims it:
//! a [`claim_entry`] with an epoch above every one seen, every entry it writes stamped
//! with that epoch. Then:
//! - a restore ignores an older epoch's entries after a newer claim, and a claim voids
//!   the unfinished batch before it (`restore.rs`); the keys it ignored are written
//!   again by the new owner with its own values, so compaction never keeps an ignored
//!   version alone;
//! - each append must land right after the writer's previous one. When it does not, the
//!   records in between say who else wrote: a claim by another owner means this worker
//!   lost the partition, so it is *fenced* (it writes nothing more, drops its local
//!   state so that a later assignment restores in full, and waits for the group to take
//!   the partition away); an older writer's entries mean a zombie wrote after this
//!   worker's claim, so the partition restores again (ignoring them) and claims anew.
//!
//! Exactly-once needs none of this: the stage's transaction fences a zombie.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::gaps::Gaps;
use super::io::{Appended, Backend, Incoming, LogReader};
use super::restore::Restored;
use super::worker::{Folded, Worker};
use super::Stopped;
use crate::store::changelog::{claim_entry, claimed_epoch, epoch_of};
use crate::store::{Changes, Entry};

/// This worker's claim on its partition's changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Writer {
    pub(super) epoch: u64,
    /// The offset the writer's next entry must land at.
    pub(super) next: i64,
}

/// Who else wrote between two appends of a writer of epoch `own`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Foreign {
    /// Nobody: the records are the writer's own (part of an attempt that failed).
    None,
    /// Another owner claimed the partition.
    Claimed,
    /// Another writer's entries: a previous owner that did not know it lost the
    /// partition (or an unstamped writer).
    Entries,
}

/// Classify the records (key, writer epoch) found between a writer's appends.
pub(super) fn classify<'a>(records: impl IntoIterator<Item = (&'a [u8], Option<u64>)>, own: u64) -> Foreign {
    let mut found = Foreign::None;
    for (key, epoch) in records {
        match (claimed_epoch(key), epoch) {
            // A claim of this writer's own epoch is its own only when it carries it.
            (Some(e), Some(w)) if e == own && w == own => {}
            (Some(_), _) => return Foreign::Claimed,
            (None, Some(w)) if w == own => {}
            (None, _) => found = Foreign::Entries,
        }
    }
    found
}

/// How a checked append ended.
pub(super) enum Checked {
    Written(Appended),
    /// See [`Foreign::Claimed`].
    Fenced,
    /// See [`Foreign::Entries`].
    Foreign,
}

impl<B: Backend> Worker<B> {
    /// After a restore, at least once: claim the changelog with an epoch above every one
    /// `restored` saw, writing again the keys it ignored. `false` when another owner
    /// claimed it meanwhile (the worker is fenced).
    pub(super) async fn claim(&mut self, mut restored: Restored, stop: &CancellationToken) -> Result<bool, Stopped> {
        loop {
            let epoch = restored.epoch.map_or(1, |e| e + 1);
            let mut entries = vec![claim_entry(epoch)];
            let store = self.store.clone();
            // Meta keys are not state: the meta entry is written from sled's below.
            for key in restored.stale.iter().filter(|k| !k.starts_with(b"m:")) {
                entries.push(self.retry("store", stop, || async { store.entry_of(key) }).await?);
            }
            if !restored.stale.is_empty() {
                entries.extend(self.retry("store", stop, || async { store.meta_now() }).await?);
            }
            self.writer = Some(Writer {
                epoch,
                next: restored.end,
            });
            match self.append_checked(&entries, stop).await? {
                Checked::Written(a) => {
                    let next = restored.stale.is_empty().then_some(a.last + 1);
                    self.retry("store", stop, || async { store.set_writer_epoch(epoch, next) })
                        .await?;
                    tracing::info!(
                        stage = self.stage.as_str(),
                        partition = self.partition,
                        epoch,
                        rewritten = restored.stale.len(),
                        "claimed the partition's changelog"
                    );
                    return Ok(true);
                }
                Checked::Fenced => {
                    self.fence(stop).await?;
                    return Ok(false);
                }
                // The previous owner wrote after the restore read to the end, before the
                // claim: what it wrote follows the log, so read it and claim again.
                Checked::Foreign => restored = self.restore_now(stop).await?,
            }
        }
    }

    /// Append `entries` under the writer's epoch and check that nobody else wrote since
    /// the writer's previous append.
    pub(super) async fn append_checked(
        &mut self,
        entries: &[Entry],
        stop: &CancellationToken,
    ) -> Result<Checked, Stopped> {
        let cx = self.cx.clone();
        let topic = cx.settings.changelog(self.stage);
        let epoch = self.writer.map(|w| w.epoch);
        let appended = self
            .retry("changelog", stop, || {
                cx.backend.append(topic, self.partition, epoch, entries)
            })
            .await?;
        cx.metrics.changelog_records.inc_by(entries.len() as u64);
        let Some(w) = self.writer else {
            return Ok(Checked::Written(appended));
        };
        let foreign = if appended.follows(w.next, entries.len()) {
            Foreign::None
        } else {
            self.between(w.next, appended.last, w.epoch, stop).await?
        };
        Ok(match foreign {
            Foreign::None => {
                self.writer = Some(Writer {
                    next: appended.last + 1,
                    ..w
                });
                Checked::Written(appended)
            }
            Foreign::Claimed => Checked::Fenced,
            Foreign::Entries => Checked::Foreign,
        })
    }

    /// Log a batch's entries, then its meta entry, each checked: the offset after the
    /// meta entry (`None` when the batch applied nothing), or how the batch must end
    /// when another writer came in between.
    pub(super) async fn log_batch(
        &mut self,
        entries: &[Entry],
        changes: &Changes,
        stop: &CancellationToken,
    ) -> Result<Result<Option<i64>, Folded>, Stopped> {
        let meta: Vec<Entry> = changes.meta_entry().into_iter().collect();
        let mut next = None;
        for part in [entries, &meta] {
            if part.is_empty() {
                continue;
            }
            match self.append_checked(part, stop).await? {
                Checked::Written(a) => next = Some(a.last + 1),
                Checked::Fenced => return Ok(Err(Folded::Fenced)),
                Checked::Foreign => return Ok(Err(Folded::Rewind)),
            }
        }
        Ok(Ok(next.filter(|_| !meta.is_empty())))
    }

    /// Who wrote the changelog's records from `from` to `until` (inclusive).
    async fn between(&self, from: i64, until: i64, own: u64, stop: &CancellationToken) -> Result<Foreign, Stopped> {
        let cx = &self.cx;
        let (topic, partition) = (cx.settings.changelog(self.stage), self.partition);
        let mut reader = self
            .retry("changelog", stop, || async {
                cx.backend.open(topic, partition, Some(from))
            })
            .await?;
        let mut records: Vec<Incoming> = Vec::new();
        loop {
            let m = tokio::select! {
                m = reader.next() => m,
                () = stop.cancelled() => return Err(Stopped),
            };
            match m {
                Ok(Some(m)) if m.record.origin.offset <= until => records.push(m),
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(partition, changelog = topic, error = %e, "reading the changelog failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                        () = stop.cancelled() => return Err(Stopped),
                    }
                }
            }
        }
        let foreign = classify(
            records
                .iter()
                .map(|m| (m.record.key.as_deref().unwrap_or_default(), epoch_of(&m.record.headers))),
            own,
        );
        if foreign != Foreign::None {
            tracing::warn!(
                stage = self.stage.as_str(),
                partition,
                from,
                until,
                ?foreign,
                "another writer wrote the partition's changelog"
            );
        }
        Ok(foreign)
    }

    /// Another owner claimed the partition: write nothing more, forget the local state
    /// (a later assignment restores it in full) and wait for the group to take the
    /// partition away ([`Worker::fenced_too_long`]).
    pub(super) async fn fence(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        tracing::warn!(
            stage = self.stage.as_str(),
            partition = self.partition,
            "another instance claimed this partition's changelog: writing nothing more until the group \
             takes the partition away"
        );
        self.cx.metrics.fenced.inc();
        self.enter(super::lifecycle::Phase::Fenced);
        let store = self.store.clone();
        self.retry("store", stop, || async { store.discard_state() }).await?;
        self.writer = None;
        self.fenced_at = Some(Instant::now());
        self.gaps = Gaps::default();
        self.update_held_gauge();
        Ok(())
    }

    /// Whether the worker has been fenced for longer than a session: the group did not
    /// take the partition away, so this instance is its owner after all (two owners
    /// claimed at once) and claims it again.
    pub(super) fn fenced_too_long(&self) -> bool {
        self.fenced_at
            .is_some_and(|at| at.elapsed() > self.cx.settings.session_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_between_appends_say_who_else_wrote() {
        let claim = |e| claim_entry(e).key;
        let (c2, c3) = (claim(2), claim(3));
        assert_eq!(classify([(&b"pa"[..], Some(2))], 2), Foreign::None);
        assert_eq!(classify([(&c2[..], Some(2))], 2), Foreign::None, "its own claim");
        assert_eq!(classify([(&b"pa"[..], Some(1))], 2), Foreign::Entries, "a zombie");
        assert_eq!(classify([(&b"pa"[..], None)], 2), Foreign::Entries, "unstamped");
        assert_eq!(
            classify([(&b"pa"[..], Some(1)), (&c3[..], Some(3))], 2),
            Foreign::Claimed,
            "a newer owner"
        );
        assert_eq!(classify([(&c2[..], None)], 2), Foreign::Claimed, "a tie");
    }
}
