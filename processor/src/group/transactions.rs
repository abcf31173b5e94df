//! Under exactly-once, each stage's committer: the one task that commits and aborts the
//! stage's transactions (Kafka Streams' `exactly_once_v2`, KIP-447).
//!
//! Every commit interval, when a send failed, and on every hand-over, it closes the
//! stage's gate ([`crate::partition::txn`]) so that no batch is half-written, sends the
//! offsets the workers decided up to with the consuming member's *current* group
//! metadata, and commits: outputs, changelog entries, control records and offsets
//! become visible together. Only then is the local state of the partitions that wrote
//! marked committed. A member fenced out of the group (a zombie: paused past its
//! session timeout) fails here and aborts; so does any other failed transaction, after
//! which every partition that wrote in it rewinds. A fatal error (the producer fenced
//! by a newer incarnation with the same `transactional.id`), or a call that does not
//! return within its bound, replaces the producer.
//!
//! The cases around it:
//! - A member thrown out of the group (a zombie: paused past its session timeout) cannot
//!   commit: its offsets carry a stale generation, and its revocation callback
//!   (`assignment_lost()`) fences the stage at once (nothing commits, no batch starts: the
//!   broker may still accept the old generation, and the member may rejoin before its
//!   workers stopped), stops its workers where they are and aborts. Its open transaction
//!   holds back `read_committed` readers until it is aborted, within
//!   `transaction_timeout_ms` (10 s).
//! - A fenced producer is replaced, and so is one whose call does not return within its
//!   bound (librdkafka can wait forever for a group coordinator that went away,
//!   librdkafka #5456 and #5511).
//! - Each member is polled on a thread of its own, where the rebalance callbacks wait
//!   for the coordinator. Revocation and shutdown commit what the revoked workers
//!   decided before the callback returns. Assignment is a rendezvous: a partition's queue
//!   is split off before librdkafka fetches it, so its records come in offset order
//!   through one queue (offsets jump over commit markers; that is not a hole).
//! - The meta entry stays under exactly-once: it carries the applied offset, the
//!   partition's clock and whether a commit marker follows the applied record, which is
//!   all a restore needs to know where the state stands (its "ignore what follows the
//!   last meta entry" rule then never applies: a committed transaction ends with one).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio::sync::{mpsc, oneshot};

use super::consumer::GroupConsumer;
use crate::kafka::txn::{TxnError, TxnProducer};
use crate::metrics::Metrics;
use crate::partition::txn::{Closed, TxnGate};
use crate::partition::Stage;
use crate::store::Store;

/// What the coordinator asks of a committer.
#[derive(Debug)]
pub enum Request {
    /// `partitions` were handed over (their workers exited): commit what they decided.
    Commit(BTreeSet<i32>, oneshot::Sender<()>),
    /// `partitions` were lost (their workers were stopped): abort the transaction.
    Abort(BTreeSet<i32>, oneshot::Sender<()>),
}

/// One stage's committer.
#[allow(missing_debug_implementations)] // rdkafka clients
pub struct Committer {
    pub stage: Stage,
    /// The stage's input topic.
    pub topic: String,
    pub producer: Arc<TxnProducer>,
    pub consumer: Arc<GroupConsumer>,
    pub gate: Arc<TxnGate>,
    pub store: Store,
    pub metrics: Metrics,
    pub interval: Duration,
}

impl Committer {
    /// Serve until `requests` closes, committing every interval.
    pub async fn run(self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut tick = tokio::time::interval(self.interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = requests.recv() => match r {
                    Some(Request::Commit(gone, done)) => {
                        self.settle(&gone, false).await;
                        let _ = done.send(());
                    }
                    Some(Request::Abort(gone, done)) => {
                        self.settle(&gone, true).await;
                        // The lost partitions' workers are stopped (the coordinator asks
                        // only then): the stage writes again.
                        self.gate.unfence();
                        let _ = done.send(());
                    }
                    None => return,
                },
                () = self.gate.wait_failed() => self.settle(&BTreeSet::new(), true).await,
                _ = tick.tick() => self.settle(&BTreeSet::new(), false).await,
            }
        }
    }

    /// Commit the open transaction (or abort it: asked to, or a send failed); `gone`:
    /// partitions no longer this instance's.
    async fn settle(&self, gone: &BTreeSet<i32>, abort: bool) {
        let closed = self.gate.close().await;
        let pending = self.gate.pending(&closed);
        if pending.is_empty() && !pending.failed {
            self.handed_over(&closed, gone);
            return;
        }
        if abort || pending.failed || pending.fenced {
            self.abort(&closed, gone, "aborted").await;
            return;
        }
        let offsets: Vec<(String, i32, i64)> = pending
            .offsets
            .iter()
            .map(|(p, next)| (self.topic.clone(), *p, *next))
            .collect();
        let group = self.consumer.group_metadata();
        let committed = self.call(2, move |p| p.commit(&offsets, group.as_ref())).await;
        match committed {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&[self.stage.as_str(), "committed"])
                    .inc();
                self.committed(&pending.written);
                self.gate.committed(&closed);
                self.handed_over(&closed, gone);
            }
            Err(e) => {
                tracing::warn!(stage = self.stage.as_str(), error = %e, error_source = ?std::error::Error::source(&e),
                    "the transaction did not commit; aborting it");
                self.abort_after(&closed, gone, e).await;
            }
        }
    }

    /// The partitions that wrote hold committed state now.
    fn committed(&self, written: &BTreeSet<i32>) {
        for p in written {
            let marked = self.store.partition(&self.topic, *p).and_then(|s| s.mark_committed());
            if let Err(e) = marked {
                // The mark left behind only makes the next assignment restore from
                // the changelog.
                tracing::warn!(partition = p, error = %e, "cannot mark the partition's state committed");
            }
        }
    }

    /// The handed-over partitions remember the offset they were committed at (a later
    /// `processor replay` below it is recognised), and are forgotten.
    fn handed_over(&self, closed: &Closed<'_>, gone: &BTreeSet<i32>) {
        for p in gone {
            let Some(next) = self.gate.last_committed(*p) else {
                continue;
            };
            if let Err(e) = self
                .store
                .partition(&self.topic, *p)
                .and_then(|s| s.record_commit(next))
            {
                tracing::warn!(partition = p, error = %e, "cannot record the committed offset");
            }
        }
        self.gate.forget(closed, gone);
    }

    async fn abort_after(&self, closed: &Closed<'_>, gone: &BTreeSet<i32>, e: TxnError) {
        if e.replaces_producer() {
            self.replace(closed, gone).await;
        } else {
            self.abort(closed, gone, "aborted").await;
        }
    }

    /// Abort the open transaction; the partitions that wrote in it rewind.
    async fn abort(&self, closed: &Closed<'_>, gone: &BTreeSet<i32>, outcome: &str) {
        match self.call(1, TxnProducer::abort).await {
            Ok(()) => {
                self.metrics
                    .transactions
                    .with_label_values(&[self.stage.as_str(), outcome])
                    .inc();
                self.gate.aborted(closed, gone);
            }
            Err(e) => {
                tracing::warn!(stage = self.stage.as_str(), error = %e, error_source = ?std::error::Error::source(&e),
                    "the transaction could not be aborted; replacing the producer");
                self.replace(closed, gone).await;
            }
        }
    }

    /// Replace a producer that failed for good: its transaction is aborted by the new
    /// one's initialisation. Retried until it succeeds (the broker may be away).
    async fn replace(&self, closed: &Closed<'_>, gone: &BTreeSet<i32>) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.call(1, TxnProducer::recreate).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(stage = self.stage.as_str(), error = %e, error_source = ?std::error::Error::source(&e),
                        "cannot replace the transactional producer; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::warn!(
            stage = self.stage.as_str(),
            transactional_id = self.producer.transactional_id(),
            "transactional producer replaced"
        );
        self.metrics
            .transactions
            .with_label_values(&[self.stage.as_str(), "fenced"])
            .inc();
        self.gate.aborted(closed, gone);
    }

    /// Run a blocking call of the producer (`calls` coordinator calls in a row) on a
    /// blocking thread, bounded ([`TxnProducer::bound`]). A call past its bound is left
    /// to its thread (it cannot be cancelled) and reported as
    /// [`TxnError::NoAnswer`]: the producer is then replaced, which fences the old one.
    async fn call<T: Send + 'static>(
        &self,
        calls: u32,
        f: impl FnOnce(&TxnProducer) -> Result<T, TxnError> + Send + 'static,
    ) -> Result<T, TxnError> {
        let bound = self.producer.bound(calls);
        let producer = self.producer.clone();
        let call = tokio::task::spawn_blocking(move || f(&producer));
        match tokio::time::timeout(bound, call).await {
            Ok(Ok(r)) => r,
            // The call panicked: the producer's state is unknown.
            Ok(Err(_)) => Err(TxnError::NoAnswer(Duration::ZERO)),
            Err(_) => {
                tracing::error!(
                    stage = self.stage.as_str(),
                    bound_ms = bound.as_millis() as u64,
                    "a transactional call did not return within its bound; replacing the producer \
                     (its thread stays blocked in librdkafka)"
                );
                self.metrics
                    .transactions
                    .with_label_values(&[self.stage.as_str(), "hung"])
                    .inc();
                Err(TxnError::NoAnswer(bound))
            }
        }
    }
}
