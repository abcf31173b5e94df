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
//! `processor/README.md`, "Architecture", walks one webhook through these files.

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

use config::Guarantee;
use partition::Stage;

/// Each stage's transactional producers (exactly-once) and how to reach them.
type Transactional = Vec<(Stage, Arc<kafka::txn::TxnProducer>)>;

/// The stages' writers. Under exactly-once each stage's outputs and changelog entries
/// go through the stage's transactional producer (initialised here, which fences this
/// instance's previous incarnation); at least once, through two idempotent producers
/// shared by both stages.
async fn writers(
    config: &ProcessorConfig,
) -> Result<([kafka::backend::StageWriters; 2], Transactional, partition::Gates), ProcessorError> {
    use kafka::backend::StageWriters;
    use kafka::changelog::ChangelogWriter;
    use kafka::emit::Emitter;
    let k = &config.kafka;
    if k.processing_guarantee == Guarantee::AtLeastOnce {
        let w = StageWriters {
            emitter: Emitter::new(k)?,
            changelog: ChangelogWriter::new(k)?,
        };
        return Ok(([w.clone(), w], Vec::new(), partition::Gates::default()));
    }
    let instance = kafka::txn::instance_id(k, &config.state_dir).map_err(ProcessorError::StateDir)?;
    let start = |stage: Stage| {
        let id = format!("{}-{instance}-{}", k.group_id, stage.as_str());
        let cfg = k.clone();
        async move {
            let producer = tokio::task::spawn_blocking(move || kafka::txn::TxnProducer::start(&cfg, id))
                .await
                .map_err(|_| rdkafka::error::KafkaError::Canceled)??;
            Ok::<_, ProcessorError>(Arc::new(producer))
        }
    };
    let (payments, policies) = (start(Stage::Payments).await?, start(Stage::Policies).await?);
    let of = |p: &kafka::txn::TxnProducer| StageWriters {
        emitter: Emitter::with(k, p.slot()),
        changelog: ChangelogWriter::with(p.slot()),
    };
    let writers = [of(&payments), of(&policies)];
    let producers = vec![(Stage::Payments, payments), (Stage::Policies, policies)];
    Ok((writers, producers, partition::Gates::exactly_once()))
}
pub use error::ProcessorError;

/// The two stages' group consumers, subscribed, their rebalance callbacks sending to
/// `membership` (one coordinator task reads it: `group`).
fn members(
    config: &ProcessorConfig,
    metrics: &metrics::Metrics,
    gates: &partition::Gates,
    membership: mpsc::UnboundedSender<group::coordinator::Membership>,
) -> Result<group::Members, ProcessorError> {
    use group::consumer::{GroupConsumer, GroupContext, StageTopics};
    // The callback's own bound: the coordinator's deadline, then time to stop workers.
    let revoke_bound = group::hand_over_deadline(config.kafka.session_timeout) * 2 + std::time::Duration::from_secs(5);
    let topics = StageTopics {
        raw: config.kafka.raw_topic.clone(),
        requests: config.kafka.requests_topic(),
    };
    let member = |c: rdkafka::ClientConfig, topic: &str, stage: Stage| -> Result<Arc<GroupConsumer>, ProcessorError> {
        let gate = gates.of(stage).cloned();
        let context = GroupContext::new(metrics.clone(), topics.clone(), membership.clone(), revoke_bound, gate);
        let consumer: GroupConsumer = c.create_with_context(context)?;
        consumer.subscribe(&[topic])?;
        Ok(Arc::new(consumer))
    };
    Ok(group::Members {
        payments: member(
            kafka::client::group_consumer(&config.kafka),
            &topics.raw,
            Stage::Payments,
        )?,
        policies: member(
            kafka::client::policy_consumer(&config.kafka),
            &topics.requests,
            Stage::Policies,
        )?,
    })
}

/// What the admin API serves from: the store, the holes, the metrics, the payment
/// stage's consumer (for lag and assignment).
fn admin_view(
    config: &ProcessorConfig,
    cx: &partition::Context<kafka::backend::KafkaBackend<group::consumer::GroupContext>>,
    consumer: Arc<group::consumer::GroupConsumer>,
) -> Result<admin::View, ProcessorError> {
    let token = admin::load_token(&config.admin_token_file).map_err(|source| ProcessorError::AdminToken {
        path: config.admin_token_file.clone(),
        source,
    })?;
    Ok(admin::View {
        token,
        max_connections: config.admin_max_connections.max(1),
        holes: cx.holes.clone(),
        store: cx.store.clone(),
        raw_topic: config.kafka.raw_topic.clone(),
        requests_topic: config.kafka.requests_topic(),
        metrics: cx.metrics.clone(),
        consumer,
    })
}

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
    kafka::topics::ensure_internal(&config.kafka, &shutdown).await?;
    let (writers, producers, gates) = writers(&config).await?;
    let (membership_tx, membership) = mpsc::unbounded_channel();
    let members = members(&config, &metrics, &gates, membership_tx)?;
    tracing::info!(
        brokers = %config.kafka.brokers, group = %config.kafka.group_id, topic = %config.kafka.raw_topic,
        requests_topic = %config.kafka.requests_topic(),
        state_dir = %config.state_dir.display(),
        admin = %admin.local_addr().map_err(ProcessorError::Listener)?,
        "processor started"
    );
    let backend = kafka::backend::KafkaBackend::new(
        config.kafka.clone(),
        writers,
        members.payments.clone(),
        members.policies.clone(),
    );
    let cx = Arc::new(partition::Context {
        settings: partition::Settings::from(&config),
        flusher: store::Flusher::start(&store),
        store: store.clone(),
        backend,
        metrics,
        tracer: trace::RecordTracer::new(&config.tracing)?,
        rebuilds: tokio::sync::Semaphore::new(config.processing.max_concurrent_rebuilds.max(1)),
        holes: Default::default(),
        gates,
    });
    let view = admin_view(&config, &cx, members.payments.clone())?;
    let admin_task = tokio::spawn(admin::serve(view, admin, shutdown.clone()));
    group::run(cx.clone(), members, producers, membership, shutdown).await;
    let _ = admin_task.await;
    // Flush the spans still queued; blocking, so off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || cx.tracer.shutdown()).await;
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(ProcessorError::FinalFlush)??;
    tracing::info!("processor stopped");
    Ok(())
}
