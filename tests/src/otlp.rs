//! An OTLP/HTTP receiver for tests: it takes the protobuf `ExportTraceServiceRequest`s an
//! exporter POSTs to `/v1/traces`, decodes them with opentelemetry-proto's message types
//! (what the exporter encodes with), and keeps every span. No collector installs here;
//! this one speaks the same wire format.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// Hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// String, integer and boolean attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

/// What the receiver keeps.
#[derive(Debug, Default)]
struct Kept {
    /// Whether to keep the spans themselves (else only counts).
    keep: bool,
    spans: Vec<ReceivedSpan>,
    by_service: BTreeMap<String, usize>,
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    kept: Arc<Mutex<Kept>>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn text(kv: &[KeyValue]) -> BTreeMap<String, String> {
    kv.iter()
        .filter_map(|a| {
            let v = match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((a.key.clone(), v))
        })
        .collect()
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| text(&r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    attributes: text(&s.attributes),
                });
            }
        }
    }
    out
}

async fn handle(kept: Arc<Mutex<Kept>>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path_ok = req.uri().path() == "/v1/traces";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let status = match ExportTraceServiceRequest::decode(body) {
        Ok(r) if path_ok => {
            let spans = spans_of(r);
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            for s in &spans {
                *kept.by_service.entry(s.service.clone()).or_default() += 1;
            }
            if kept.keep {
                kept.spans.extend(spans);
            }
            200
        }
        _ => 400,
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(resp)
}

impl Receiver {
    /// Listen on a free loopback port, keeping every span.
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0", true).await
    }

    /// Listen on `addr` (`host:port`); `keep`: keep the spans, else only count them.
    pub async fn start_on(addr: &str, keep: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let kept = Arc::new(Mutex::new(Kept {
            keep,
            ..Kept::default()
        }));
        let stop = CancellationToken::new();
        let (shared, token) = (kept.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = token.cancelled() => return,
                    s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                };
                let kept = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(kept.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { endpoint, kept, stop }
    }

    /// Every span received so far (none unless started to keep them).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).spans.clone()
    }

    /// How many spans each service sent.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).by_service.clone()
    }
}
