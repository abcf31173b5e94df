//! The accept loop: bounded connections, header-read timeout, graceful shutdown.
//!
//! On shutdown it stops accepting, lets in-flight requests finish (each still waits for
//! its broker acknowledgement, so nothing answered 200 is lost), closes idle keep-alive
//! connections, and flushes the producer, all within `shutdown_grace_ms`.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::error::IngestError;
use crate::peer::Peer;
use crate::router::handle;

/// Serve `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) -> Result<(), IngestError> {
    let connections = Arc::new(Semaphore::new(app.http.max_connections));
    let graceful = GracefulShutdown::new();
    let header_timeout = app.http.header_read_timeout;
    let max_buf = app.http.max_header_bytes.max(8192);
    loop {
        // Take a connection slot first: at the limit, new clients wait in the accept queue.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Per-connection errors (e.g. EMFILE, reset) must not stop the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            // Bounds the request line and headers (431 beyond), and what one
            // connection buffers of a body before the handler reads it.
            .max_buf_size(max_buf)
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer.ip()));
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&app, req).await) }
                }),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let grace = app.http.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: finishing in-flight requests"
    );
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within the grace period");
    }
    let publisher = app.publisher.clone();
    let flushed = tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(2))).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("producer did not flush every queued record");
    }
    tracing::info!("ingest stopped");
    Ok(())
}
