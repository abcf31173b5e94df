//! `ingest --config FILE`: load the config, start the server, stop on SIGTERM or ctrl-c.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use hookstream_ingest::IngestConfig;
use tokio_util::sync::CancellationToken;

/// hookstream's webhook receiver: verifies, validates and publishes each webhook, and
/// answers 200 only once the broker has acknowledged it.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The TOML configuration (every field has a default; INGEST_* environment
    /// variables override it, see infra/config/ingest.toml).
    #[arg(long, default_value = "infra/config/ingest.toml")]
    config: PathBuf,
}

/// jemalloc, not glibc's malloc: at ingest's maximum glibc's malloc/free, arena lock
/// waits included, took a sixth of its CPU (measured in `tests/README.md`, "Benchmarks").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn")),
        )
        .init();
    let path = Cli::parse().config;
    let config = IngestConfig::load(&path).with_context(|| format!("loading {}", path.display()))?;
    // Before the producer is made: rdkafka's own error would print the value.
    hookstream_schemas::librdkafka::check_passthrough(&config.kafka.librdkafka)
        .with_context(|| format!("loading {}", path.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;

    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        signal_token.cancel();
    });
    hookstream_ingest::run(config, listener, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
