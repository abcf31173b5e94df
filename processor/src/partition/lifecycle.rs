//! A partition worker's lifecycle, after Kafka Streams' task states.
//!
//! ```text
//!   Created ──► Restoring ──► Running ──────────────► Closed
//!                 ▲   │        │  ▲  │  ▲
//!                 │   │        │  │  ▼  │
//!                 │   │        │  Rebuilding          (a stored value that does not read back)
//!                 │   ▼        ▼     │
//!                 └── Fenced ◄─┴─────┘                (another owner claimed the changelog)
//! ```
//!
//! - **Created**: the worker exists, its state store is open; nothing read yet.
//! - **Restoring**: sled is brought up to the changelog and the group's offset
//!   (`restore.rs`, `reconcile.rs`): on assignment, and again after an aborted
//!   transaction or another writer's entries (a rewind).
//! - **Running**: deciding delivered records in batches.
//! - **Rebuilding**: the stored state did not read back; it is restored, or rebuilt from
//!   the log, before the batch is decided again.
//! - **Fenced** (at least once): another instance claimed the partition's changelog; the
//!   worker writes nothing until the group takes the partition away, or claims it again
//!   (restoring) after a session.
//! - **Closed**: handed over (revocation, shutdown) or stopped; the worker is gone.
//!
//! Every phase may also end in Closed (a stop can come at any await point). The phase
//! is logged at each change and counted per stage in
//! `hookstream_processor_partition_workers{stage,phase}`.

use super::io::Backend;
use super::worker::Worker;

/// Where a worker is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Restoring,
    Running,
    Rebuilding,
    Fenced,
    Closed,
}

impl Phase {
    /// Every phase a worker can be in, for the gauge.
    pub const ALL: [Phase; 6] = [
        Phase::Created,
        Phase::Restoring,
        Phase::Running,
        Phase::Rebuilding,
        Phase::Fenced,
        Phase::Closed,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Restoring => "restoring",
            Phase::Running => "running",
            Phase::Rebuilding => "rebuilding",
            Phase::Fenced => "fenced",
            Phase::Closed => "closed",
        }
    }

    /// Whether a worker in this phase may go to `next` (the diagram above). Staying in
    /// a phase is allowed: a rewind met while restoring restores again.
    pub fn may_become(self, next: Phase) -> bool {
        use Phase::*;
        if self == next {
            return self != Closed;
        }
        match (self, next) {
            (Closed, _) | (_, Created) => false,
            (_, Closed) => true,
            (Created, Restoring) => true,
            (Restoring, Running | Fenced | Rebuilding) => true,
            (Running, Restoring | Rebuilding | Fenced) => true,
            (Rebuilding, Restoring | Running | Fenced) => true,
            (Fenced, Restoring) => true,
            _ => false,
        }
    }
}

impl<B: Backend> Worker<B> {
    /// Go to phase `next`, logged and counted; a change the lifecycle does not have is
    /// logged as an error (a bug), and made all the same.
    pub(super) fn enter(&mut self, next: Phase) {
        let (from, stage) = (self.phase, self.stage.as_str());
        if from == next {
            return;
        }
        if !from.may_become(next) {
            tracing::error!(
                stage,
                partition = self.partition,
                from = from.as_str(),
                to = next.as_str(),
                "a lifecycle change the worker does not have"
            );
        }
        tracing::debug!(
            stage,
            partition = self.partition,
            from = from.as_str(),
            to = next.as_str(),
            "lifecycle"
        );
        let workers = &self.cx.metrics.partition_workers;
        workers.with_label_values(&[stage, from.as_str()]).dec();
        if next != Phase::Closed {
            workers.with_label_values(&[stage, next.as_str()]).inc();
        }
        self.phase = next;
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::*;
    use super::*;

    #[test]
    fn the_lifecycle_goes_only_along_its_arrows() {
        let path = [
            Created, Restoring, Running, Rebuilding, Running, Restoring, Fenced, Restoring, Running, Closed,
        ];
        for w in path.windows(2) {
            assert!(w[0].may_become(w[1]), "{:?} -> {:?}", w[0], w[1]);
        }
        assert!(!Created.may_become(Running), "never running unrestored");
        assert!(!Fenced.may_become(Running), "a fenced worker restores first");
        assert!(!Closed.may_become(Restoring), "closed is the end");
        assert!(!Running.may_become(Created));
        assert!(Phase::ALL.iter().all(|p| *p == Closed || p.may_become(Closed)));
    }
}
