//! When a partition's applied offset goes to the group, and how (at least once; under
//! exactly-once the stage's committer commits, `group/transactions.rs`).
//!
//! Committing less often than every batch is safe: the offset only says where a *new*
//! owner starts, and this instance's sled knows the exact point; records between the
//! two are decided again identically. Each commit is a broker request per partition, so
//! at 5,000 webhooks/s a commit per batch cost the broker more than the records.

use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::SpanContext;

use super::io::{Backend, CommitMode};
use super::retry::Failure;
use super::worker::{Worker, MAX_AWAITING_COMMIT};

/// The applied offset not yet committed, the last one committed, and when.
#[derive(Debug)]
pub struct Commits {
    uncommitted: Option<i64>,
    committed: Option<i64>,
    last: Instant,
    interval: Duration,
}

impl Commits {
    /// Commit at most every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            uncommitted: None,
            committed: None,
            last: Instant::now(),
            interval,
        }
    }

    /// The state now covers up to `offset` (`None`: nothing new).
    pub fn applied(&mut self, offset: Option<i64>) {
        if offset.is_some() {
            self.uncommitted = offset;
        }
    }

    /// The applied offset to commit now, if any: a new one once the interval has passed,
    /// or for the hand-over (`last`) whatever was applied, even if already committed,
    /// because that commit is the one that is awaited and remembered.
    pub fn due(&self, now: Instant, last: bool) -> Option<i64> {
        if last {
            return self.uncommitted.or(self.committed);
        }
        let applied = self.uncommitted?;
        (now.duration_since(self.last) >= self.interval).then_some(applied)
    }

    /// `applied` was committed (or the commit was sent and may be superseded).
    pub fn done(&mut self, applied: i64, now: Instant) {
        self.committed = Some(applied);
        self.uncommitted = None;
        self.last = now;
    }
}

impl<B: Backend> Worker<B> {
    /// Commit the applied offset when due ([`Commits`]), asynchronously: the next
    /// commit supersedes a lost one.
    pub(super) fn commit(&mut self) {
        if self.fenced_at.is_some() {
            return;
        }
        if let Some(gate) = &self.gate {
            // The stage's committer commits; report what it committed.
            let committed = gate.last_committed(self.partition);
            if let Some(next) = committed.filter(|n| self.reported.is_none_or(|r| *n > r)) {
                self.reported = Some(next);
                self.report_committed(next, SystemTime::now());
            }
            return;
        }
        let now = Instant::now();
        let Some(applied) = self.commits.due(now, false) else {
            return;
        };
        let started = SystemTime::now();
        if let Err(e) = self
            .cx
            .backend
            .commit(&self.topic, self.partition, applied + 1, CommitMode::Async)
        {
            tracing::warn!(partition = self.partition, error = %e, "offset commit failed");
        } else {
            self.report_committed(applied + 1, started);
        }
        self.commits.done(applied, now);
    }

    /// The hand-over commit on revocation or shutdown: synchronous (on a blocking
    /// thread, so that a broker that does not answer holds up no task of the runtime),
    /// and once acknowledged remembered in sled, so that a later `processor replay` to
    /// before it is recognised (the group consumer delivers no callbacks for the
    /// asynchronous commits to do this).
    pub(super) async fn hand_over(&mut self) {
        if self.gate.is_some() || self.fenced_at.is_some() {
            // The stage's committer commits the hand-over, once every revoked worker
            // exited; a fenced worker hands nothing over.
            return;
        }
        let now = Instant::now();
        let Some(applied) = self.commits.due(now, true) else {
            return;
        };
        let (cx, topic, partition) = (self.cx.clone(), self.topic.clone(), self.partition);
        let started = SystemTime::now();
        let committed =
            tokio::task::spawn_blocking(move || cx.backend.commit(&topic, partition, applied + 1, CommitMode::Sync))
                .await;
        match committed {
            Err(e) => tracing::warn!(partition = self.partition, error = %e, "hand-over commit did not finish"),
            Ok(Err(e)) => tracing::warn!(partition = self.partition, error = %e.chain(), "hand-over commit failed"),
            Ok(Ok(())) => {
                self.report_committed(applied + 1, started);
                if let Err(e) = self.store.record_commit(applied + 1) {
                    tracing::warn!(partition = self.partition, error = %e, "cannot record the committed offset");
                }
            }
        }
        self.commits.done(applied, now);
    }

    /// `next` was committed (or sent, asynchronously) after `started`: the gauge, and
    /// the commit spans of the sampled records it covers.
    pub(super) fn report_committed(&mut self, next: i64, started: SystemTime) {
        self.cx
            .metrics
            .committed_offset
            .with_label_values(&[self.stage.as_str(), &self.partition.to_string()])
            .set(next);
        let ended = SystemTime::now();
        while self.awaiting_commit.front().is_some_and(|(o, _)| *o < next) {
            if let Some((_, sc)) = self.awaiting_commit.pop_front() {
                self.cx.tracer.commit(&sc, next, started, ended);
            }
        }
    }

    /// A sampled record at `offset` waits for the commit that covers it.
    pub(super) fn await_commit(&mut self, offset: i64, record: SpanContext) {
        if self.awaiting_commit.len() >= MAX_AWAITING_COMMIT {
            self.awaiting_commit.pop_front();
        }
        self.awaiting_commit.push_back((offset, record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_wait_for_the_interval_and_the_hand_over_always_commits() {
        let t0 = Instant::now();
        let mut c = Commits::new(Duration::from_millis(500));
        assert_eq!(c.due(t0, false), None, "nothing applied");
        assert_eq!(c.due(t0, true), None, "nothing to hand over");
        c.applied(Some(7));
        c.applied(None);
        assert_eq!(c.due(t0, false), None, "within the interval");
        let later = t0 + Duration::from_millis(600);
        assert_eq!(c.due(later, false), Some(7));
        c.done(7, later);
        assert_eq!(c.due(later + Duration::from_secs(5), false), None, "nothing new");
        assert_eq!(c.due(later, true), Some(7), "the hand-over repeats the last commit");
        c.applied(Some(9));
        assert_eq!(c.due(later, true), Some(9));
    }
}
