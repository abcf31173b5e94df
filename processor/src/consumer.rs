//! The consumer group: one consumer reads the raw topic and hands each record to its
//! partition's worker (one task per partition, so per-payment order holds and the
//! partitions spread over every core).
//!
//! Each assigned partition's records come from its own librdkafka queue, split off the
//! consumer's, through a feeder task into its worker's bounded queue. A worker that is
//! behind then holds up only its own partition. With one shared queue, the dispatcher
//! waited on the first full worker queue while the other workers sat idle: in a backlog
//! drain it was blocked 95% of the time. The group consumer's own queue still has to be
//! polled for rebalances; the records it yields (fetched before a split) go the same way.
//!
//! Rebalances use the cooperative-sticky assignor, so only moved partitions stop. When a
//! partition is revoked, its worker finishes and commits what it holds before the
//! rebalance completes (with a deadline below the session timeout); a newly assigned
//! partition's worker reconciles sled with the committed offset before its first record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookstream_schemas::KafkaHeader;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::model::{Origin, RawRecord};
use crate::worker::{Incoming, Shared, Worker};

/// The group consumer's type.
pub type GroupConsumer = StreamConsumer<GroupContext>;

struct WorkerHandle {
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Moves the partition's own queue into `tx` (see [`feed`]); `None` when librdkafka
    /// gave no partition queue, and the records come through the group consumer.
    feeder: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Stop feeding the worker: the feeder's sender is the worker's only other one.
    fn stop_feeding(&mut self) {
        if let Some(f) = self.feeder.take() {
            f.abort();
        }
    }
}

type Workers = Arc<Mutex<HashMap<i32, WorkerHandle>>>;

/// Rebalance handling and statistics for the group consumer.
pub struct GroupContext {
    metrics: Metrics,
    workers: Workers,
    revoke_deadline: Duration,
    /// Newly assigned partitions, for the dispatcher to start their workers at once.
    assigned: mpsc::UnboundedSender<Vec<i32>>,
}

impl std::fmt::Debug for GroupContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupContext").finish_non_exhaustive()
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: Statistics) {
        for t in stats.topics.values() {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.metrics
                        .lag
                        .with_label_values(&[&p.to_string()])
                        .set(s.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions revoked; finishing their in-flight work");
                let started = Instant::now();
                let handles: Vec<WorkerHandle> = {
                    let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
                    partitions.iter().filter_map(|p| w.remove(p)).collect()
                };
                // Empty after the dispatcher stopped: it finished every worker itself.
                finish_workers(handles, self.revoke_deadline);
                tracing::info!(
                    ?partitions,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "revocation done"
                );
            }
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "partitions assigned");
                let _ = self.assigned.send(partitions);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Close the workers' queues so they finish what they hold, commit, and exit; after
/// `deadline`, stop them (an unfinished batch is simply consumed again) and wait until
/// they have exited, so that no worker outlives its partition or the processor.
async fn finish(handles: Vec<WorkerHandle>, deadline: Duration) {
    let (stops, mut tasks): (Vec<_>, Vec<_>) = handles
        .into_iter()
        .map(|mut h| {
            h.stop_feeding();
            drop(h.tx);
            (h.stop, h.task)
        })
        .unzip();
    if tokio::time::timeout(deadline, futures_util::future::join_all(tasks.iter_mut()))
        .await
        .is_err()
    {
        tracing::warn!("workers did not finish within the deadline; stopping them");
        for s in stops {
            s.cancel();
        }
        // Only the ones not yet joined: a joined handle must not be polled again.
        tasks.retain(|t| !t.is_finished());
        futures_util::future::join_all(tasks).await;
    }
}

/// [`finish`] from librdkafka's rebalance callback, which runs inside the runtime (in
/// the dispatcher's `recv`): the workers finish in a task on the other threads while this
/// thread waits, bounded, without a tokio timer. If the runtime is shutting down (a
/// cancelled task dropped the last handle on the consumer, whose close revokes), the
/// task is dropped at once and the wait ends with it, instead of waiting for timers and
/// tasks that will never run again.
fn finish_workers(handles: Vec<WorkerHandle>, deadline: Duration) {
    if handles.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        for h in handles {
            h.stop.cancel();
        }
        return;
    };
    let (done, finished) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        finish(handles, deadline).await;
        let _ = done.send(());
    });
    if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        let bound = deadline * 2 + Duration::from_secs(5);
        let waited = tokio::task::block_in_place(|| finished.recv_timeout(bound));
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = waited {
            tracing::warn!(
                bound_ms = bound.as_millis() as u64,
                "revoked partitions' workers still running; going on (their records are consumed again)"
            );
        }
    }
}

/// Create the group consumer.
pub fn create(
    cfg: &KafkaConfig,
    metrics: Metrics,
    revoke_deadline: Duration,
) -> KafkaResult<(Arc<GroupConsumer>, mpsc::UnboundedReceiver<Vec<i32>>)> {
    let (assigned, assigned_rx) = mpsc::unbounded_channel();
    let ctx = GroupContext {
        metrics,
        workers: Arc::default(),
        revoke_deadline,
        assigned,
    };
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("client.id", &cfg.client_id)
        // Offsets are committed by the workers, only after outputs are acknowledged and
        // state is durable (DESIGN.md, "Commit").
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning of the retained log: the raw topic is the
        // source of truth and nothing in it may be skipped.
        .set("auto.offset.reset", "earliest")
        // Incremental rebalances: partitions that stay put keep processing.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        // Fetch tuning (see the config's doc comments): end-to-end latency vs. the
        // number of fetch requests the broker must answer under load.
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", cfg.fetch_min_bytes.to_string())
        // Bound each partition's pre-fetch queue below librdkafka's 64 MiB. The queues
        // are split per partition (see the module doc), so this is per partition. 1 MiB
        // held back fetches during a 5,000/s spike (end-to-end p99 683-712 ms in three
        // runs against 515 with 2 MiB and 527 with 4); a 1M-event drain peaked at 406 MB
        // RSS with 2 MiB and 476 with 4, at the same rate.
        .set("queued.max.messages.kbytes", "2048")
        // Per-partition lag for /metrics.
        .set("statistics.interval.ms", "5000");
    if let Some(id) = &cfg.group_instance_id {
        // Static membership: a restart within the session timeout keeps its partitions.
        c.set("group.instance.id", id);
    }
    if !cfg.debug.is_empty() {
        // Opt-in protocol tracing (see the field's doc comment), off by default.
        c.set("debug", &cfg.debug);
    }
    let consumer: GroupConsumer = c.create_with_context(ctx)?;
    Ok((Arc::new(consumer), assigned_rx))
}

/// A consumed message as the rules see it, with its traceparent header.
pub fn raw_record<M: Message>(m: &M) -> (RawRecord, Option<String>) {
    let mut headers = Vec::new();
    let mut traceparent = None;
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            if h.key == hookstream_schemas::topics::headers::TRACEPARENT {
                traceparent = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
            }
            headers.push(KafkaHeader {
                name: h.key.to_owned(),
                value: h.value.map(<[u8]>::to_vec),
            });
        }
    }
    let record = RawRecord {
        origin: Origin {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        },
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    };
    (record, traceparent)
}

/// The sender of `partition`'s worker, starting the worker and its feeder if it is not
/// running.
fn worker_for(shared: &Arc<Shared>, workers: &Workers, partition: i32) -> Option<mpsc::Sender<Incoming>> {
    let mut w = workers.lock().unwrap_or_else(|p| p.into_inner());
    let alive = w.get(&partition).is_some_and(|h| !h.tx.is_closed());
    if !alive {
        if let Some(mut gone) = w.remove(&partition) {
            gone.stop_feeding();
        }
        match Worker::new(shared.clone(), partition) {
            Ok(worker) => {
                let (tx, rx) = mpsc::channel(shared.config.processing.partition_queue_records.max(1));
                let stop = CancellationToken::new();
                let task = tokio::spawn(worker.run(rx, stop.clone()));
                let queue = shared
                    .consumer
                    .split_partition_queue(&shared.config.kafka.raw_topic, partition);
                if queue.is_none() {
                    tracing::warn!(
                        partition,
                        "no partition queue; its records come through the group consumer"
                    );
                }
                let feeder = queue.map(|q| tokio::spawn(feed(q, tx.clone(), partition)));
                w.insert(partition, WorkerHandle { tx, stop, task, feeder });
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "cannot open partition state");
                return None;
            }
        }
    }
    w.get(&partition).map(|h| h.tx.clone())
}

/// Move one partition's records from its own queue into its worker's, until the worker
/// is gone or the feeder is stopped. A full worker queue holds up this partition only.
async fn feed(queue: StreamPartitionQueue<GroupContext>, tx: mpsc::Sender<Incoming>, partition: i32) {
    loop {
        let (record, traceparent) = match queue.recv().await {
            Ok(m) => raw_record(&m),
            Err(e) => {
                tracing::warn!(partition, error = %e, "consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let record = std::sync::Arc::new(record);
        if tx.send(Incoming { record, traceparent }).await.is_err() {
            return;
        }
    }
}

/// Read the raw topic and dispatch to partition workers until `shutdown`. Workers start
/// as soon as their partition is assigned (`assigned`), so they reconcile before traffic.
pub async fn dispatch(
    shared: Arc<Shared>,
    mut assigned: mpsc::UnboundedReceiver<Vec<i32>>,
    shutdown: CancellationToken,
) {
    let consumer = shared.consumer.clone();
    let workers = consumer.context().workers.clone();
    loop {
        let m: BorrowedMessage<'_> = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(partitions) = assigned.recv() => {
                for p in partitions {
                    worker_for(&shared, &workers, p);
                }
                continue;
            }
            m = consumer.recv() => match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let partition = m.partition();
        let (record, traceparent) = raw_record(&m);
        drop(m);
        if let Some(tx) = worker_for(&shared, &workers, partition) {
            // A full queue blocks here: backpressure instead of unbounded memory.
            let record = Arc::new(record);
            if tx.send(Incoming { record, traceparent }).await.is_err() {
                tracing::warn!(
                    partition,
                    "worker gone; the record will be consumed again after the rebalance"
                );
            }
        }
    }
    let handles: Vec<WorkerHandle> = {
        let mut w = workers.lock().unwrap_or_else(|p| p.into_inner());
        w.drain().map(|(_, h)| h).collect()
    };
    let deadline = Duration::from_millis(u64::from(shared.config.kafka.session_timeout_ms) / 2);
    finish(handles, deadline).await;
    consumer.unsubscribe();
}
