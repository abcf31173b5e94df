//! The group consumer: its rebalance callbacks, the poll loop, and the per-partition
//! feeds.
//!
//! Each assigned partition's records come from its own librdkafka queue, split off the
//! consumer's, through a feed task into its worker's bounded queue. A worker that is
//! behind then holds up only its own partition. With one shared queue, the dispatcher
//! waited on the first full worker queue while the other workers sat idle: in a backlog
//! drain it was blocked 95% of the time. The group consumer's own queue still has to be
//! polled, for rebalances; the records it yields (fetched before a split) go to the
//! coordinator.
//!
//! Rebalances use the cooperative-sticky assignor, so only moved partitions stop. The
//! callbacks only send [`Membership`] messages to the coordinator and wait, bounded, for
//! its answer before they return to librdkafka: an assignment so that the partitions'
//! queues are split off before anything of them is fetched, a revocation because the
//! revoked workers' final commits must reach the broker before the rebalance completes.
//! The consumer is polled on a thread of its own ([`spawn_poller`]), where that wait
//! blocks nothing else.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::statistics::Statistics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::coordinator::{Key, Membership};
use crate::kafka::record::incoming;
use crate::metrics::Metrics;
use crate::partition::io::Incoming;
use crate::partition::queue::Feeder;
use crate::partition::txn::TxnGate;
use crate::partition::Stage;

/// The input topic of each stage, to tell which stage a partition belongs to.
#[derive(Debug, Clone)]
pub struct StageTopics {
    pub raw: String,
    pub requests: String,
}

impl StageTopics {
    /// The key of `topic`'s `partition`; `None` for a topic no stage reads.
    pub fn key(&self, topic: &str, partition: i32) -> Option<Key> {
        if topic == self.raw {
            Some((Stage::Payments, partition))
        } else if topic == self.requests {
            Some((Stage::Policies, partition))
        } else {
            None
        }
    }
}

/// The group consumer's type.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Rebalance callbacks and statistics for the group consumer.
pub struct GroupContext {
    metrics: Metrics,
    topics: StageTopics,
    membership: mpsc::UnboundedSender<Membership>,
    /// How long a revocation waits for the coordinator's answer.
    revoke_bound: Duration,
    /// Under exactly-once, the stage's transaction gate: fenced the moment the
    /// assignment is lost, before the coordinator gets to the workers.
    gate: Option<Arc<TxnGate>>,
}

impl GroupContext {
    pub fn new(
        metrics: Metrics,
        topics: StageTopics,
        membership: mpsc::UnboundedSender<Membership>,
        revoke_bound: Duration,
        gate: Option<Arc<TxnGate>>,
    ) -> Self {
        Self {
            metrics,
            topics,
            membership,
            revoke_bound,
            gate,
        }
    }

    /// Tell the coordinator and wait for its answer, bounded. The callbacks run where
    /// the consumer is polled: on its own thread ([`spawn_poller`]) the wait simply
    /// blocks; on a worker of a multi-threaded runtime it is `block_in_place`; anywhere
    /// else (nothing would run the coordinator meanwhile) it does not wait, and the
    /// revoked records are read again by their next owner.
    fn ask(&self, message: impl FnOnce(std::sync::mpsc::SyncSender<()>) -> Membership) {
        let (done, answered) = std::sync::mpsc::sync_channel(1);
        if self.membership.send(message(done)).is_err() {
            return;
        }
        let bound = self.revoke_bound;
        let waited = if POLL_THREAD.get() {
            answered.recv_timeout(bound)
        } else {
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if !multi_thread {
                return;
            }
            tokio::task::block_in_place(|| answered.recv_timeout(bound))
        };
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = waited {
            tracing::warn!(
                bound_ms = bound.as_millis() as u64,
                "the coordinator did not answer within the bound; going on (the partitions' records are consumed again)"
            );
        }
    }
}

impl GroupContext {
    fn keys(&self, tpl: &rdkafka::TopicPartitionList) -> Vec<Key> {
        tpl.elements()
            .iter()
            .filter_map(|e| self.topics.key(e.topic(), e.partition()))
            .collect()
    }
}

impl std::fmt::Debug for GroupContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupContext").finish_non_exhaustive()
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.metrics
                        .lag
                        .with_label_values(&[topic.as_str(), &p.to_string()])
                        .set(s.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) if consumer.assignment_lost() => {
                let partitions = self.keys(tpl);
                tracing::warn!(
                    ?partitions,
                    "assignment lost (this member was thrown out of the group); stopping its workers, writing nothing more"
                );
                self.metrics.rebalances.with_label_values(&["lost"]).inc();
                // The coordinator may be busy (with the other stage's loss): nothing of
                // this stage commits from now on, whatever group metadata it would carry.
                if let Some(g) = &self.gate {
                    g.fence();
                }
                self.ask(|done| Membership::Lost(partitions, done));
            }
            Rebalance::Revoke(tpl) => {
                let partitions = self.keys(tpl);
                tracing::info!(?partitions, "partitions revoked; finishing their in-flight work");
                self.metrics.rebalances.with_label_values(&["revoked"]).inc();
                let started = std::time::Instant::now();
                let revoked = partitions.clone();
                self.ask(|done| Membership::Revoked(revoked, done));
                tracing::info!(
                    ?partitions,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "revocation done"
                );
            }
            Rebalance::Assign(tpl) => {
                let partitions = self.keys(tpl);
                tracing::info!(?partitions, "partitions assigned");
                self.metrics.rebalances.with_label_values(&["assigned"]).inc();
                // A rendezvous: the partitions' queues are split off before librdkafka
                // is told of the assignment, so none of their records is fetched into
                // the group's own queue (and none can come out of order).
                self.ask(|done| Membership::Assigned(partitions, Some(done)));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

thread_local! {
    /// Set on a thread of [`spawn_poller`]'s: the rebalance callbacks may block there.
    static POLL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Poll the group consumer on a thread of its own (Vector's Kafka source does the
/// same): its rebalance callbacks wait for the coordinator, which may take the whole
/// hand-over deadline, and must not hold a worker of the processor's runtime meanwhile.
/// The thread runs [`poll`] on a single-threaded runtime of its own (for the poll's
/// timers); it ends with `shutdown`.
pub fn spawn_poller(
    name: &str,
    consumer: Arc<GroupConsumer>,
    topics: StageTopics,
    records: mpsc::Sender<(Key, Incoming)>,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        POLL_THREAD.set(true);
        runtime.block_on(poll(consumer, topics, records, shutdown));
    })
}

/// Poll the group consumer until `shutdown`: this serves the rebalance callbacks, and
/// passes on the records that arrive through the group's own queue.
pub async fn poll(
    consumer: Arc<GroupConsumer>,
    topics: StageTopics,
    records: mpsc::Sender<(Key, Incoming)>,
    shutdown: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            () = shutdown.cancelled() => return,
            m = consumer.recv() => m,
        };
        let r = match m {
            Ok(m) => incoming(&m),
            Err(e) => {
                tracing::warn!(error = %e, "consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(key) = topics.key(&r.record.origin.topic, r.record.origin.partition) else {
            continue;
        };
        // A full coordinator queue waits here: backpressure instead of unbounded memory.
        if records.send((key, r)).await.is_err() {
            return;
        }
    }
}

/// Move one partition's records from its own queue into its worker's, until the worker
/// is gone or the feed is aborted. A full worker queue holds up this partition only.
pub async fn feed(queue: StreamPartitionQueue<GroupContext>, tx: Feeder, partition: i32) {
    loop {
        let r = match queue.recv().await {
            Ok(m) => incoming(&m),
            Err(e) => {
                tracing::warn!(partition, error = %e, "consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.send(r).await.is_err() {
            return;
        }
    }
}
