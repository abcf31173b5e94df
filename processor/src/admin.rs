//! Admin HTTP: `GET /payments/{payment_id}`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rdkafka::consumer::Consumer;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::group::consumer::GroupConsumer;
use crate::metrics::Metrics;
use crate::store::Store;

/// What the admin API reads: the state, the metrics, and the group consumer (for
/// readiness).
#[derive(Clone)]
#[allow(missing_debug_implementations)] // handles
pub struct View {
    pub store: Store,
    pub raw_topic: String,
    pub metrics: Metrics,
    pub consumer: Arc<GroupConsumer>,
}

fn reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The JSON view of a payment: state, applied sequence, held events, activation, and the
/// events that went to the DLQ.
fn payment_view(shared: &View, payment_id: &str) -> Response<Full<Bytes>> {
    match shared.store.find_payment(&shared.raw_topic, payment_id) {
        Err(e) => reply(503, &json!({ "error": "state_unavailable", "detail": e.to_string() })),
        Ok(None) => reply(404, &json!({ "error": "unknown_payment", "payment_id": payment_id })),
        Ok(Some((partition, st))) => {
            let held: Vec<Value> = st
                .held
                .values()
                .map(|h| {
                    json!({ "sequence": h.event.sequence, "event_id": h.event.event_id,
                    "event_type": h.event.event_type, "offset": h.record.origin.offset })
                })
                .collect();
            let dead: Vec<&crate::rules::model::HistoryEntry> = st
                .history
                .iter()
                .filter(|e| e.outcome.starts_with("dead_lettered:"))
                .collect();
            let applied: Vec<&crate::rules::model::HistoryEntry> =
                st.history.iter().filter(|e| e.outcome == "applied").collect();
            reply(
                200,
                &json!({
                    "payment_id": st.payment_id,
                    "partition": partition,
                    "status": st.status,
                    "applied_sequence": st.next_sequence - 1,
                    "held": held,
                    "activation": st.activation,
                    "cancellation_id": st.cancellation_id,
                    "applied": applied,
                    "dead_lettered": dead,
                    "history": st.history,
                }),
            )
        }
    }
}

async fn handle(shared: View, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if req.method() != Method::GET {
        return reply(405, &json!({ "error": "method_not_allowed" }));
    }
    match path.as_str() {
        "/healthz" => reply(200, &json!({ "status": "ok" })),
        "/readyz" => {
            let consumer = shared.consumer.clone();
            let topic = shared.raw_topic.clone();
            let check = tokio::task::spawn_blocking(move || {
                let md = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                match md.topics().iter().find(|t| t.name() == topic) {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                    _ => Err(format!("topic {topic} does not exist")),
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match check {
                Ok(()) => reply(200, &json!({ "ready": true })),
                Err(detail) => reply(503, &json!({ "error": "not_ready", "detail": detail })),
            }
        }
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        p if p.starts_with("/payments/") && p.len() > "/payments/".len() => {
            payment_view(&shared, &p["/payments/".len()..])
        }
        _ => reply(404, &json!({ "error": "not_found" })),
    }
}

/// Serve the admin API until `shutdown`.
pub async fn serve(shared: View, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
