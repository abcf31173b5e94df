//! When a partition's applied offset goes to the group.
//!
//! Committing less often than every batch is safe: the offset only says where a *new*
//! owner starts, and this instance's sled knows the exact point; records between the
//! two are decided again identically. Each commit is a broker request per partition, so
//! at 5,000 webhooks/s a commit per batch cost the broker more than the records.

use std::time::{Duration, Instant};

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
