//! The accept loop: bounded connections (in all, and per peer address), header-read
//! timeout, graceful shutdown.
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
use crate::peer::{Peer, PeerLedger};
use crate::router::handle;

/// Answer a connection beyond its peer's share 429 and close it, without reading its
/// request; within a second, or the connection is just closed.
async fn refuse(mut stream: tokio::net::TcpStream, retry_after: Duration) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":"too_many_connections"}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        retry_after.as_secs().max(1),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
}

/// Serve `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: CancellationToken) -> Result<(), IngestError> {
    let connections = Arc::new(Semaphore::new(app.http.max_connections));
    let per_peer = PeerLedger::new(app.http.max_connections_per_peer);
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
        let mut share = None;
        if !per_peer.grow(&mut share, peer.ip(), 1) {
            app.metrics.connections_refused.inc();
            tokio::spawn(refuse(stream, app.http.retry_after));
            continue;
        }
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
            drop((permit, share));
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
