//! Admin HTTP: `GET /payments/{payment_id}[?source=S]`, `GET /policies/{policy_id}`,
//! `GET /holes`, `POST /holes/{topic}/{partition}/acknowledge`, `/healthz`, `/readyz`,
//! `/metrics`. Path segments are percent-decoded. The one mutating endpoint accepts data
//! loss, so it takes a bearer token (`admin_token_file` or `PROCESSOR_ADMIN_TOKEN`):
//! 401 without the right one, 403 while none is configured. At most
//! `admin_max_connections` connections are served at once.

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
    /// The bearer token of the mutating endpoints; `None`: they refuse.
    pub token: Option<Arc<str>>,
    pub max_connections: usize,
    pub holes: Arc<crate::partition::holes::Holes>,
    pub store: Store,
    pub raw_topic: String,
    pub requests_topic: String,
    pub metrics: Metrics,
    pub consumer: Arc<GroupConsumer>,
}

/// The admin token: the file's content (trimmed) when `path` is set, else
/// `PROCESSOR_ADMIN_TOKEN`; `None` when neither gives one.
pub fn load_token(path: &std::path::Path) -> Result<Option<Arc<str>>, std::io::Error> {
    let token = if path.as_os_str().is_empty() {
        std::env::var("PROCESSOR_ADMIN_TOKEN").unwrap_or_default()
    } else {
        std::fs::read_to_string(path)?
    };
    let token = token.trim();
    Ok((!token.is_empty()).then(|| Arc::from(token)))
}

/// Whether `req` carries `Authorization: Bearer <token>`, compared in constant time.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `segment` percent-decoded (RFC 3986), `None` when it is not valid UTF-8 or a `%` is
/// not followed by two hex digits.
fn decode_segment(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The JSON view of a payment: state, applied sequence, held events, the activation it
/// asked for, and the events that went to the DLQ. A payment is (source, payment_id):
/// `source` picks one; without it the first by source is shown and `other_sources`
/// names the rest.
fn payment_view(shared: &View, payment_id: &str, source: Option<&str>) -> Response<Full<Bytes>> {
    let found = match shared.store.find_payments(&shared.raw_topic, payment_id) {
        Err(e) => return reply(503, &json!({ "error": "state_unavailable", "detail": e.to_string() })),
        Ok(found) => found,
    };
    let (chosen, others): (Vec<_>, Vec<_>) = found
        .into_iter()
        .enumerate()
        .partition(|(i, (_, st))| source.map_or(*i == 0, |s| st.source == s));
    let Some((_, (partition, st))) = chosen.into_iter().next() else {
        return reply(
            404,
            &json!({ "error": "unknown_payment", "payment_id": payment_id, "source": source }),
        );
    };
    let held: Vec<Value> = st
        .held
        .values()
        .map(|h| {
            json!({ "sequence": h.event.sequence, "event_id": h.event.event_id,
            "event_type": h.event.event_type, "offset": h.record.origin.offset })
        })
        .collect();
    let dead: Vec<_> = st
        .history
        .iter()
        .filter(|e| e.outcome.starts_with("dead_lettered:"))
        .collect();
    let applied: Vec<_> = st.history.iter().filter(|e| e.outcome == "applied").collect();
    let other_sources: Vec<&str> = others.iter().map(|(_, (_, o))| o.source.as_str()).collect();
    reply(
        200,
        &json!({
            "payment_id": st.payment_id,
            "source": st.source,
            "other_sources": other_sources,
            "topic": shared.raw_topic,
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

/// `POST /holes/{topic}/{partition}/acknowledge`: the operator accepts that the records
/// of the hole are gone; the partition goes on from the log start.
fn acknowledge_hole(shared: &View, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let hole = req
        .uri()
        .path()
        .strip_prefix("/holes/")
        .and_then(|p| p.strip_suffix("/acknowledge"))
        .and_then(|p| p.rsplit_once('/'))
        .and_then(|(topic, partition)| Some((decode_segment(topic)?, partition.parse::<i32>().ok()?)));
    let Some((topic, partition)) = hole else {
        return reply(405, &json!({ "error": "method_not_allowed" }));
    };
    match shared.token.as_deref() {
        None => {
            return reply(
                403,
                &json!({ "error": "admin_token_not_configured", "detail": "set admin_token_file or PROCESSOR_ADMIN_TOKEN" }),
            )
        }
        Some(t) if !authorized(req, t) => return reply(401, &json!({ "error": "unauthorized" })),
        Some(_) => {}
    }
    if !shared.holes.acknowledge(&topic, partition) {
        return reply(
            404,
            &json!({ "error": "no_hole", "topic": topic, "partition": partition }),
        );
    }
    tracing::warn!(topic, partition, "hole acknowledged by an operator");
    reply(
        200,
        &json!({ "acknowledged": true, "topic": topic, "partition": partition }),
    )
}

/// The JSON view of a policy as the policy stage decided it: the holder, every payment
/// that asked and where it stands (holder, duplicate, released, refunded), the history.
fn policy_view(shared: &View, policy_id: &str) -> Response<Full<Bytes>> {
    match shared.store.find_policy(&shared.requests_topic, policy_id) {
        Err(e) => reply(503, &json!({ "error": "state_unavailable", "detail": e.to_string() })),
        Ok(None) => reply(404, &json!({ "error": "unknown_policy", "policy_id": policy_id })),
        Ok(Some((partition, st))) => {
            let duplicates: Vec<_> = st
                .payments
                .iter()
                .filter(|p| p.standing == crate::rules::policy::Standing::Duplicate)
                .collect();
            reply(
                200,
                &json!({
                    "policy_id": st.policy_id,
                    "partition": partition,
                    "holder": st.holder(),
                    "duplicates": duplicates,
                    "payments": st.payments,
                    "history": st.history,
                }),
            )
        }
    }
}

async fn handle(shared: View, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if req.method() == Method::POST {
        return acknowledge_hole(&shared, &req);
    }
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
            let (holes, stalled) = (shared.holes.list(), shared.holes.stalled());
            match check {
                Ok(()) if holes.is_empty() && stalled.is_empty() => reply(200, &json!({ "ready": true })),
                Ok(()) => reply(
                    503,
                    &json!({ "error": "not_ready", "detail": "partitions stopped at a hole in their log or at a write the broker refuses", "holes": holes, "stalled": stalled }),
                ),
                Err(detail) => reply(503, &json!({ "error": "not_ready", "detail": detail })),
            }
        }
        "/holes" => reply(200, &json!({ "holes": shared.holes.list() })),
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        p if p.starts_with("/payments/") && p.len() > "/payments/".len() => {
            let source = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("source=")))
                .map(decode_segment);
            match (decode_segment(&p["/payments/".len()..]), source) {
                (Some(id), None) => payment_view(&shared, &id, None),
                (Some(id), Some(Some(s))) => payment_view(&shared, &id, Some(&s)),
                _ => reply(400, &json!({ "error": "invalid_path" })),
            }
        }
        p if p.starts_with("/policies/") && p.len() > "/policies/".len() => {
            match decode_segment(&p["/policies/".len()..]) {
                Some(id) => policy_view(&shared, &id),
                None => reply(400, &json!({ "error": "invalid_path" })),
            }
        }
        _ => reply(404, &json!({ "error": "not_found" })),
    }
}

/// Serve the admin API until `shutdown`.
pub async fn serve(shared: View, listener: TcpListener, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.max_connections));
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
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
            let _slot = slot;
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

#[cfg(test)]
mod tests {
    use super::decode_segment;

    #[test]
    fn path_segments_are_percent_decoded_and_bad_escapes_refused() {
        assert_eq!(decode_segment("pay%5F1%20x").as_deref(), Some("pay_1 x"));
        assert_eq!(decode_segment("plain").as_deref(), Some("plain"));
        assert_eq!(decode_segment("bad%2"), None);
        assert_eq!(decode_segment("bad%zz"), None);
        assert_eq!(decode_segment("%ff"), None, "not UTF-8");
    }
}
