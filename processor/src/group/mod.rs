//! The consumer group: membership, assignment and hand-over of the raw partitions.
//!
//! [`consumer`] holds the group consumer (its callbacks, its poll loop, the partition
//! feeds); [`coordinator`] owns the workers. [`run`] wires them: callbacks → membership
//! messages → the coordinator, which starts a [`Worker`] per assigned partition and
//! hands it over on revocation and shutdown.

pub mod consumer;
pub mod coordinator;
pub mod transactions;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka::backend::KafkaBackend;
use crate::partition::io::Incoming;
use crate::partition::queue::Feeder;
use crate::partition::worker::Worker;
use crate::partition::{Context, Stage};
use consumer::{GroupConsumer, GroupContext, StageTopics};
use coordinator::{Coordinator, Key, Membership, Spawner};

/// The backend of a worker in a running processor.
pub type Backend = KafkaBackend<GroupContext>;

/// Starts real workers over the broker, fed from the consumer's partition queues.
struct Workers {
    cx: Arc<Context<Backend>>,
    members: Members,
    /// Under exactly-once, each stage's committer.
    committers: Vec<(Stage, mpsc::UnboundedSender<transactions::Request>)>,
}

impl Workers {
    /// Ask each stage's committer about its partitions among `keys` and wait.
    async fn ask(&self, keys: &[Key], abort: bool) {
        for (stage, tx) in &self.committers {
            let partitions: std::collections::BTreeSet<i32> =
                keys.iter().filter(|(s, _)| s == stage).map(|(_, p)| *p).collect();
            if partitions.is_empty() {
                continue;
            }
            let (done, answered) = tokio::sync::oneshot::channel();
            let request = match abort {
                true => transactions::Request::Abort(partitions, done),
                false => transactions::Request::Commit(partitions, done),
            };
            if tx.send(request).is_ok() {
                let _ = answered.await;
            }
        }
    }
}

/// This instance's members of the group: one reads the raw topic, one the policy
/// stage's repartition topic (each with the fetch settings its traffic needs).
#[derive(Clone)]
#[allow(missing_debug_implementations)] // rdkafka clients
pub struct Members {
    pub payments: Arc<GroupConsumer>,
    pub policies: Arc<GroupConsumer>,
}

impl Members {
    fn of(&self, stage: Stage) -> &Arc<GroupConsumer> {
        match stage {
            Stage::Payments => &self.payments,
            Stage::Policies => &self.policies,
        }
    }
}

impl Spawner for Workers {
    type Worker = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

    fn worker(&mut self, key: Key, rx: mpsc::Receiver<Incoming>, stop: CancellationToken) -> Option<Self::Worker> {
        let (stage, partition) = key;
        match Worker::new(self.cx.clone(), stage, partition) {
            Ok(w) => Some(Box::pin(w.run(rx, stop))),
            Err(e) => {
                tracing::error!(stage = stage.as_str(), partition, error = %e, "cannot open partition state");
                None
            }
        }
    }

    fn feed(&mut self, key: Key, tx: Feeder) -> Option<JoinHandle<()>> {
        let (stage, partition) = key;
        let topic = self.cx.settings.topic(stage);
        match self.members.of(stage).split_partition_queue(topic, partition) {
            Some(q) => Some(tokio::spawn(consumer::feed(q, tx, partition))),
            None => {
                tracing::warn!(
                    partition,
                    "no partition queue; its records come through the group consumer"
                );
                None
            }
        }
    }

    async fn handed_over(&mut self, partitions: &[Key]) {
        self.ask(partitions, false).await;
    }

    async fn lost(&mut self, partitions: &[Key]) {
        self.ask(partitions, true).await;
    }
}

/// Records the group consumer's own queue holds on their way to their workers.
const GROUP_QUEUE_RECORDS: usize = 32;

/// Consume with `members` (subscribed, their callbacks sending to `membership`) until
/// `shutdown`, then hand every partition over and leave the group. `producers`: under
/// exactly-once, each stage's transactional producer.
pub async fn run(
    cx: Arc<Context<Backend>>,
    members: Members,
    producers: Vec<(Stage, Arc<crate::kafka::txn::TxnProducer>)>,
    membership: mpsc::UnboundedReceiver<Membership>,
    shutdown: CancellationToken,
) {
    let p = &cx.settings.processing;
    // Records of partitions whose queue is not split off yet pass through here to their
    // worker's queue (which bounds them by bytes): a short channel, so the pass-through
    // adds at most GROUP_QUEUE_RECORDS records (of up to ~1 MB each) on top.
    let (records_tx, records) = mpsc::channel(GROUP_QUEUE_RECORDS);
    let deadline = hand_over_deadline(cx.settings.session_timeout);
    let mut committers = Vec::new();
    let mut committer_tasks = Vec::new();
    for (stage, producer) in producers {
        let Some(gate) = cx.gates.of(stage).cloned() else {
            continue;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let committer = transactions::Committer {
            stage,
            topic: cx.settings.topic(stage).to_owned(),
            producer,
            consumer: members.of(stage).clone(),
            gate,
            store: cx.store.clone(),
            metrics: cx.metrics.clone(),
            interval: p.commit_interval,
        };
        committer_tasks.push(tokio::spawn(committer.run(rx)));
        committers.push((stage, tx));
    }
    let coordinator = Coordinator::new(
        Workers {
            cx: cx.clone(),
            members: members.clone(),
            committers,
        },
        p.partition_queue_records,
        p.partition_queue_bytes,
        deadline,
    );
    let topics = StageTopics {
        raw: cx.settings.raw_topic.clone(),
        requests: cx.settings.requests_topic.clone(),
    };
    let mut pollers = Vec::new();
    for (name, c) in [
        ("poll-payments", &members.payments),
        ("poll-policies", &members.policies),
    ] {
        match consumer::spawn_poller(name, c.clone(), topics.clone(), records_tx.clone(), shutdown.clone()) {
            Ok(t) => pollers.push(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the consumer's poll thread; stopping");
                shutdown.cancel();
            }
        }
    }
    drop(records_tx);
    coordinator.run(membership, records, shutdown).await;
    // The coordinator (and with it the committers' senders) is gone: they stop.
    for t in committer_tasks {
        let _ = t.await;
    }
    for p in pollers {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    members.payments.unsubscribe();
    members.policies.unsubscribe();
}

/// How long revoked workers may take to hand over: half the session timeout, so the
/// member is not thrown out of the group while it waits.
pub fn hand_over_deadline(session_timeout: Duration) -> Duration {
    session_timeout / 2
}
