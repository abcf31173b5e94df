//! The coordinator: the one task that owns the partition workers.
//!
//! Everything that changes which workers run arrives here as a message: partitions
//! assigned, partitions revoked (with a channel to answer on once their workers have
//! handed over), and records that came through the group's own queue. librdkafka's
//! rebalance callbacks only send these messages ([`super::consumer`]); the workers
//! live in one `JoinSet` that nothing else touches. Vector's Kafka source is the model.
//!
//! Hand-over: a revoked partition's feed stops and its queue closes, so its worker
//! finishes what it holds, commits and exits. A worker still busy after the deadline is
//! told to stop (an unfinished batch is simply consumed again by the next owner), and
//! the answer goes back only when every revoked worker has exited, so no worker ever
//! outlives its partition.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::partition::io::Incoming;
use crate::partition::queue::Feeder;
use crate::partition::Stage;

/// A partition of one of the stages' input topics.
pub type Key = (Stage, i32);

/// A change of membership, from the rebalance callbacks.
#[derive(Debug)]
pub enum Membership {
    /// Answered (when asked) once the partitions' workers and feeds run: their queues
    /// are split off before the consumer fetches anything of them.
    Assigned(Vec<Key>, Option<std::sync::mpsc::SyncSender<()>>),
    /// Answered on the channel once every revoked partition's worker has exited and
    /// its hand-over is committed.
    Revoked(Vec<Key>, std::sync::mpsc::SyncSender<()>),
    /// The assignment was lost (this member was thrown out of the group, another may
    /// already own the partitions): the workers are stopped at once and write nothing
    /// more; answered once they have exited and their uncommitted work is aborted.
    Lost(Vec<Key>, std::sync::mpsc::SyncSender<()>),
}

/// How the coordinator starts workers and their feeds: [`super::run`] wires the real
/// ones, the tests fakes.
pub trait Spawner: Send + 'static {
    type Worker: Future<Output = ()> + Send + 'static;

    /// The worker of `partition`, reading `rx` until it closes or `stop` fires; `None`
    /// when it cannot start (its state does not open), logged by the spawner.
    fn worker(&mut self, key: Key, rx: mpsc::Receiver<Incoming>, stop: CancellationToken) -> Option<Self::Worker>;

    /// A task moving the partition's own record queue into `tx`, when the consumer can
    /// split one off (otherwise its records come as [`Coordinator::run`]'s `records`).
    fn feed(&mut self, key: Key, tx: Feeder) -> Option<JoinHandle<()>>;

    /// `partitions`' workers have exited after a revocation or at shutdown: their
    /// hand-over (under exactly-once, the commit of what they decided) happens here.
    fn handed_over(&mut self, _partitions: &[Key]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// `partitions` were lost and their workers stopped: abort what they left uncommitted.
    fn lost(&mut self, _partitions: &[Key]) -> impl Future<Output = ()> + Send {
        async {}
    }
}

struct Handle {
    /// `None` once the hand-over began: the queue is closed.
    tx: Option<Feeder>,
    stop: CancellationToken,
    task: AbortHandle,
    feed: Option<JoinHandle<()>>,
}

/// Owns the workers of the partitions this instance is assigned.
#[allow(missing_debug_implementations)] // task handles
pub struct Coordinator<S: Spawner> {
    spawner: S,
    owned: HashSet<Key>,
    handles: HashMap<Key, Handle>,
    tasks: JoinSet<Key>,
    queue_records: usize,
    queue_bytes: usize,
    deadline: Duration,
}

impl<S: Spawner> Coordinator<S> {
    /// `queue_records` and `queue_bytes`: each worker's queue ([`Feeder`]); `deadline`:
    /// how long a revoked worker may take to finish before it is stopped.
    pub fn new(spawner: S, queue_records: usize, queue_bytes: usize, deadline: Duration) -> Self {
        Self {
            spawner,
            owned: HashSet::new(),
            handles: HashMap::new(),
            tasks: JoinSet::new(),
            queue_records: queue_records.max(1),
            queue_bytes,
            deadline,
        }
    }

    /// Serve membership changes and records until `shutdown` (or both channels close),
    /// then hand every partition over.
    pub async fn run(
        mut self,
        mut membership: mpsc::UnboundedReceiver<Membership>,
        mut records: mpsc::Receiver<(Key, Incoming)>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                // Before records: a record of a partition is only ever queued after
                // its assignment was sent.
                m = membership.recv() => match m {
                    Some(m) => self.change(m).await,
                    None => break,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => self.exited(done),
                r = records.recv() => match r {
                    Some((key, r)) => self.deliver(key, r).await,
                    None => break,
                },
            }
        }
        let all: Vec<Key> = self.handles.keys().copied().collect();
        self.finish(&all).await;
        self.spawner.handed_over(&all).await;
    }

    async fn change(&mut self, m: Membership) {
        match m {
            Membership::Assigned(partitions, done) => {
                for p in partitions {
                    self.owned.insert(p);
                    self.start(p);
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Membership::Revoked(partitions, done) => {
                self.disown(&partitions);
                self.finish(&partitions).await;
                self.spawner.handed_over(&partitions).await;
                let _ = done.send(());
            }
            Membership::Lost(partitions, done) => {
                self.disown(&partitions);
                self.stop_now(&partitions).await;
                self.spawner.lost(&partitions).await;
                let _ = done.send(());
            }
        }
    }

    /// `partitions` are no longer this member's: records of them are dropped.
    fn disown(&mut self, partitions: &[Key]) {
        for p in partitions {
            self.owned.remove(p);
        }
    }

    /// Start the partition's worker and feed unless it runs.
    fn start(&mut self, key: Key) -> Option<Feeder> {
        if let Some(h) = self.handles.get(&key) {
            return h.tx.clone();
        }
        let (tx, rx) = Feeder::channel(self.queue_records, self.queue_bytes);
        let stop = CancellationToken::new();
        let worker = self.spawner.worker(key, rx, stop.clone())?;
        let task = self.tasks.spawn(async move {
            worker.await;
            key
        });
        let feed = self.spawner.feed(key, tx.clone());
        let h = Handle {
            tx: Some(tx.clone()),
            stop,
            task,
            feed,
        };
        self.handles.insert(key, h);
        Some(tx)
    }

    /// A record from the group's own queue: to its worker, waiting while the worker's
    /// queue is full (backpressure). A record of a partition no longer owned is
    /// dropped: its new owner reads it again from the committed offset.
    async fn deliver(&mut self, key: Key, r: Incoming) {
        if !self.owned.contains(&key) {
            return;
        }
        if let Some(tx) = self.start(key) {
            if tx.send(r).await.is_err() {
                tracing::warn!(?key, "worker gone; the record is consumed again after the rebalance");
            }
        }
    }

    /// A worker exited while its partition was still owned (it panicked): start a new
    /// one, which reconciles from the committed state like any newly assigned worker.
    fn exited(&mut self, done: Result<Key, tokio::task::JoinError>) {
        if let Some(key) = self.joined(done).filter(|k| self.owned.contains(k)) {
            tracing::error!(
                ?key,
                "partition worker exited before its partition was revoked; restarting it"
            );
            self.start(key);
        }
    }

    /// Hand `partitions` over: close their queues so their workers finish, commit and
    /// exit; past the deadline, stop them; return when all have exited.
    async fn finish(&mut self, partitions: &[Key]) {
        self.end(partitions, false).await;
    }

    /// Stop `partitions`' workers where they are (no hand-over: the partitions are no
    /// longer this member's) and return once they have exited: a stopped task runs no
    /// further, so nothing of it can be sent after this.
    async fn stop_now(&mut self, partitions: &[Key]) {
        self.end(partitions, true).await;
    }

    /// Close `partitions`' queues (and stop their feeds); `at_once`: abort their tasks
    /// now, else let them finish until the deadline and then tell them to stop. Returns
    /// when every one of them has exited.
    async fn end(&mut self, partitions: &[Key], at_once: bool) {
        let mut waiting: HashSet<Key> = HashSet::new();
        for p in partitions {
            if let Some(h) = self.handles.get_mut(p) {
                // The feed holds the other sender: with both gone the queue closes.
                if let Some(f) = h.feed.take() {
                    f.abort();
                }
                h.tx = None;
                if at_once {
                    h.task.abort();
                }
                waiting.insert(*p);
            }
        }
        if waiting.is_empty() {
            return;
        }
        let deadline = tokio::time::sleep(self.deadline);
        tokio::pin!(deadline);
        let mut stopped = at_once;
        while !waiting.is_empty() {
            tokio::select! {
                done = self.tasks.join_next() => match done {
                    Some(done) => {
                        if let Some(p) = self.joined(done) {
                            waiting.remove(&p);
                        }
                    }
                    None => break,
                },
                () = &mut deadline, if !stopped => {
                    tracing::warn!(partitions = ?waiting, "workers did not finish within the deadline; stopping them");
                    for p in &waiting {
                        if let Some(h) = self.handles.get(p) {
                            h.stop.cancel();
                        }
                    }
                    stopped = true;
                }
            }
        }
    }

    /// Which partition's worker a join was; forgets its handle and stops its feed.
    fn joined(&mut self, done: Result<Key, tokio::task::JoinError>) -> Option<Key> {
        let p = match done {
            Ok(p) => p,
            Err(e) => {
                if !e.is_cancelled() {
                    tracing::error!(error = %e, "partition worker failed");
                }
                *self.handles.iter().find(|(_, h)| h.task.id() == e.id())?.0
            }
        };
        if let Some(f) = self.handles.remove(&p).and_then(|mut h| h.feed.take()) {
            f.abort();
        }
        Some(p)
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
