//! hookstream processor: the consumer group that turns raw webhooks into policy
//! activations, exactly once per policy.
//!
//! Its state is a projection of `payments.webhooks.raw` kept in sled ([`store`]): a
//! deterministic fold of each partition through the pure [`rules`], so it can be thrown
//! away and rebuilt by replaying the log. The layers, each importing only those below:
//!
//! - [`cli`]: the `replay` and `dlq` commands (and [`run`], here, for `processor run`);
//! - [`group`]: membership, assignment and hand-over of the raw partitions;
//! - [`kafka`]: the broker side of the partition loop's ports, one client per role;
//! - [`partition`]: one partition's loop, over the ports in [`partition::io`];
//! - [`store`]: the sled layout and its group flusher;
//! - [`rules`]: pure functions of the log (no rdkafka, no sled, no clock).
//!
//! Beside them: [`admin`] (HTTP), [`config`], [`metrics`], [`trace`], [`error`].
//! README > Architecture walks one webhook through these files.

pub mod admin;
pub mod cli;
pub mod config;
pub mod error;
pub mod group;
pub mod kafka;
pub mod metrics;
pub mod partition;
pub mod rules;
pub mod store;
pub mod trace;

use std::sync::Arc;

use rdkafka::consumer::Consumer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::ProcessorConfig;
pub use error::ProcessorError;

/// Run the processor until `shutdown`: consume, decide, emit, persist, commit; serve
/// the admin API on `admin`. Needs a multi-threaded tokio runtime (revocations wait for
/// partition workers on the other threads).
pub async fn run(
    config: ProcessorConfig,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ProcessorError> {
    std::fs::create_dir_all(&config.state_dir).map_err(ProcessorError::StateDir)?;
    let store = store::Store::open(&config.state_dir, config.processing.sled_cache_bytes)?;
    let metrics = metrics::Metrics::new();
    let emitter = kafka::emit::Emitter::new(&config.kafka)?;
    let changelog = kafka::changelog::ChangelogWriter::new(&config.kafka)?;
    kafka::topics::ensure_internal(&config.kafka, &shutdown).await?;
    let (membership_tx, membership) = mpsc::unbounded_channel();
    // The callback's own bound: the coordinator's deadline, then time to stop workers.
    let revoke_bound = group::hand_over_deadline(config.kafka.session_timeout) * 2 + std::time::Duration::from_secs(5);
    let topics = group::consumer::StageTopics {
        raw: config.kafka.raw_topic.clone(),
        requests: config.kafka.requests_topic(),
    };
    let member = |c: rdkafka::ClientConfig,
                  topic: &str|
     -> Result<Arc<group::consumer::GroupConsumer>, ProcessorError> {
        let context =
            group::consumer::GroupContext::new(metrics.clone(), topics.clone(), membership_tx.clone(), revoke_bound);
        let consumer: group::consumer::GroupConsumer = c.create_with_context(context)?;
        consumer.subscribe(&[topic])?;
        Ok(Arc::new(consumer))
    };
    let members = group::Members {
        payments: member(kafka::client::group_consumer(&config.kafka), &topics.raw)?,
        policies: member(kafka::client::policy_consumer(&config.kafka), &topics.requests)?,
    };
    drop(membership_tx);
    tracing::info!(
        brokers = %config.kafka.brokers, group = %config.kafka.group_id, topic = %config.kafka.raw_topic,
        requests_topic = %topics.requests,
        state_dir = %config.state_dir.display(),
        admin = %admin.local_addr().map_err(ProcessorError::Listener)?,
        "processor started"
    );
    let holes = Arc::new(partition::holes::Holes::default());
    let backend = kafka::backend::KafkaBackend::new(
        config.kafka.clone(),
        emitter,
        changelog,
        members.payments.clone(),
        members.policies.clone(),
    );
    let cx = Arc::new(partition::Context {
        settings: partition::Settings::from(&config),
        flusher: store::Flusher::start(&store),
        store: store.clone(),
        backend,
        metrics: metrics.clone(),
        tracer: trace::RecordTracer::new(&config.tracing)?,
        rebuilds: tokio::sync::Semaphore::new(config.processing.max_concurrent_rebuilds.max(1)),
        holes: holes.clone(),
    });
    let view = admin::View {
        holes,
        store: store.clone(),
        raw_topic: config.kafka.raw_topic.clone(),
        requests_topic: topics.requests.clone(),
        metrics,
        consumer: members.payments.clone(),
    };
    let admin_task = tokio::spawn(admin::serve(view, admin, shutdown.clone()));
    group::run(cx.clone(), members, membership, shutdown).await;
    let _ = admin_task.await;
    // Flush the spans still queued; blocking, so off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || cx.tracer.shutdown()).await;
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| ProcessorError::Store(store::StoreError::Sled(sled::Error::ReportableBug(e.to_string()))))??;
    tracing::info!("processor stopped");
    Ok(())
}
