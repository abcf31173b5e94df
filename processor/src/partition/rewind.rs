//! Doing a partition's work over, without nesting: a rewind (the stage's transaction
//! was aborted, or another writer's entries were found) restores the committed state
//! and decides the delivered records again; a rebuild replaces a stored state that does
//! not read back. Both go through the lifecycle's Restoring and Rebuilding phases
//! ([`super::lifecycle`]).

use tokio_util::sync::CancellationToken;

use super::gaps::Gaps;
use super::io::Backend;
use super::lifecycle::Phase;
use super::retry::Backoff;
use super::worker::{Mode, Worker};
use super::Stopped;

/// Where the worker is with respect to rewinds (exactly-once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Rewinding {
    #[default]
    No,
    /// Deciding the aborted records again.
    Yes,
    /// That failed too: the rewind starts over once what it reads returns.
    Again,
}

impl<B: Backend> Worker<B> {
    /// The partition's stored state does not read back: drop it, restore it from the
    /// changelog — or, when `void` (what the changelog holds does not read back either),
    /// void the changelog too — and fold what that does not cover up to `until` from the
    /// log (outputs suppressed: they were sent).
    pub(super) async fn rebuild_corrupt(
        &mut self,
        until: i64,
        void: bool,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        tracing::error!(
            partition = self.partition,
            until,
            void,
            "stored state of the partition does not read back; restoring it from the changelog{}",
            if void {
                " after voiding it: its value does not read back either"
            } else {
                ""
            }
        );
        self.cx.metrics.corrupt_rebuilds.inc();
        let store = self.store.clone();
        if void {
            self.reset(stop).await?;
        }
        self.retry("store", stop, || async { store.clear() }).await?;
        let restored = self.restore_now(stop).await?;
        if self.gate.is_none() && !self.claim(restored, stop).await? {
            return Ok(());
        }
        let applied = self.retry("store", stop, || async { store.applied_offset() }).await?;
        let from = applied.map_or(-1, |a| a + 1);
        if from < until {
            self.read_range(from, until, Mode::Rebuild, stop).await?;
        }
        self.watch_stored_gaps(stop).await
    }

    /// The stage's transaction was aborted after this partition wrote in it (or a send
    /// of its own failed it): sled holds writes that never happened. Drop the state,
    /// restore it from the changelog and the group's offset (what committed), and decide
    /// again every record delivered since — over again, after a backoff, while that is
    /// aborted too.
    pub(super) async fn rewind(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let cx = self.cx.clone();
        let mut backoff = Backoff::new(&cx.metrics, self.max_backoff(), "rewind");
        // Back to where it was once restored (a fenced worker that claims again runs).
        let after = match self.phase {
            Phase::Restoring | Phase::Rebuilding => self.phase,
            _ => Phase::Running,
        };
        self.enter(Phase::Restoring);
        self.rewinding = Rewinding::Yes;
        let rewound = loop {
            let once = self.rewind_once(stop).await;
            if once.is_err() || self.rewinding != Rewinding::Again {
                break once;
            }
            self.rewinding = Rewinding::Yes;
            if let Err(s) = backoff.pause(&"deciding the aborted records again failed", stop).await {
                break Err(s);
            }
        };
        self.rewinding = Rewinding::No;
        if rewound.is_ok() && self.phase == Phase::Restoring {
            self.enter(after);
        }
        rewound
    }

    async fn rewind_once(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        if let Some(gate) = self.gate.clone() {
            // Wait for the abort (the rewind it asks for is this one).
            let entered = tokio::select! {
                e = gate.enter(self.partition) => e,
                () = stop.cancelled() => return Err(Stopped),
            };
            drop(entered);
        }
        tracing::warn!(
            stage = self.stage.as_str(),
            partition = self.partition,
            "the transaction was aborted: restoring the partition's committed state and deciding again"
        );
        self.cx.metrics.rewinds.inc();
        if self.gate.is_some() {
            // At least once sled holds nothing uncommitted: what it has stays, and the
            // restore reads the changelog from there.
            let store = self.store.clone();
            self.retry("store", stop, || async { store.discard_state() }).await?;
        }
        self.gaps = Gaps::default();
        self.update_held_gauge();
        let cx = self.cx.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        let position = self
            .retry("group_position", stop, || cx.backend.position(&topic, partition))
            .await?;
        self.next_offset = None;
        self.reconcile(position, stop).await?;
        if self.rewinding == Rewinding::Again {
            return Ok(());
        }
        if let (Some(next), Some(until)) = (self.next_offset, self.consumed_next) {
            if until > next {
                self.read_range(next, until, Mode::Live, stop).await?;
                self.next_offset = Some(until);
            }
        }
        Ok(())
    }
}
