//! hookstream ingest: the webhook receiver.
//!
//! `POST /webhooks/{source}` verifies the signature, validates the JSON body, publishes
//! the raw webhook to Kafka keyed by payment_id, and answers 200 only once the broker
//! has acknowledged it with `acks=all` (DESIGN.md, principle 2). Everything that is not
//! a 200 is a precise status with a JSON error body.
//!
//! Verification ([`verify`]) and extraction ([`extract`]) are pure functions returning
//! domain errors, which [`error::Reject`] alone maps to HTTP; HTTP ([`server`],
//! [`router`], the [`webhook`] pipeline) and Kafka ([`publish`]) stay at the edges. [`run`] is the
//! testable entry point: tests start it in-process on port 0.

pub mod app;
pub mod body;
pub mod config;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod peer;
pub mod publish;
pub mod response;
pub mod router;
pub mod server;
pub mod trace;
pub mod verify;
pub mod webhook;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::IngestConfig;
pub use error::IngestError;

/// Run ingest on `listener` until `shutdown` is cancelled. Secrets are read from the
/// process environment (or files) named in `config`.
pub async fn run(config: IngestConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<(), IngestError> {
    let app = Arc::new(app::App::new(&config)?);
    tracing::info!(
        listen = %listener.local_addr().map_err(IngestError::Listener)?,
        brokers = %config.kafka.brokers,
        topic = %config.kafka.topic,
        sources = ?config.sources.keys().collect::<Vec<_>>(),
        "ingest started"
    );
    let served = server::serve(app.clone(), listener, shutdown).await;
    // Flush the spans still queued; blocking, so off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || app.tracer.shutdown()).await;
    served
}
