//! hookstream processor: the consumer group that turns raw webhooks into policy
//! activations, exactly once per policy.
//!
//! Its state is a projection of `payments.webhooks.raw` kept in sled ([`store`]): a
//! deterministic fold of each partition through the pure rules in [`decide`], so it can
//! be thrown away and rebuilt by replaying the log. Kafka and sled stay at the edges
//! ([`worker`], [`consumer`], [`emit`]). [`run`] is the testable entry point.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod decide;
pub mod dlq;
pub mod emit;
pub mod error;
pub mod fallback;
pub mod gaps;
pub mod ids;
pub mod input;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod offsets;
pub mod order;
pub mod replay;
pub mod retry;
pub mod store;
pub mod trace;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio::net::TcpListener;
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
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| ProcessorError::Store(store::StoreError::Sled(sled::Error::Io(e))))?;
    let store = store::Store::open(&config.state_dir, config.processing.sled_cache_bytes)?;
    let flusher = store::Flusher::start(&store);
    let metrics = metrics::Metrics::new();
    let emitter = emit::Emitter::new(&config.kafka)?;
    let revoke_deadline = Duration::from_millis(u64::from(config.kafka.session_timeout_ms) / 2);
    let (consumer, assigned) = consumer::create(&config.kafka, metrics.clone(), revoke_deadline)?;
    consumer.subscribe(&[&config.kafka.raw_topic])?;
    tracing::info!(
        brokers = %config.kafka.brokers, group = %config.kafka.group_id, topic = %config.kafka.raw_topic,
        state_dir = %config.state_dir.display(),
        admin = %admin.local_addr().map_err(ProcessorError::Listener)?,
        "processor started"
    );
    let shared = Arc::new(worker::Shared {
        config,
        store,
        flusher,
        emitter,
        metrics,
        tracer: trace::RecordTracer::default(),
        consumer,
    });
    let admin_task = tokio::spawn(admin::serve(shared.clone(), admin, shutdown.clone()));
    consumer::dispatch(shared.clone(), assigned, shutdown).await;
    let _ = admin_task.await;
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| ProcessorError::Store(store::StoreError::Sled(sled::Error::ReportableBug(e.to_string()))))??;
    tracing::info!("processor stopped");
    Ok(())
}
