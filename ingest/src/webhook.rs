//! The webhook pipeline: limits → read body → verify → extract → build the record →
//! publish → answer. Each step either continues or yields a [`Reject`].

use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{header, Method, Request};
use hyper::body::Incoming;
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::json;

use hookstream_schemas::{encode, topics::headers as kh, HttpHeader, RawWebhook};

use crate::app::{App, Source};
use crate::body::{Body, BodyLimits};
use crate::config::DEAD_LETTER_RESERVE_BYTES;
use crate::error::Reject;
use crate::extract::extract;
use crate::peer::Peer;
use crate::publish::{Delivered, PublishError};
use crate::response::{json_response, reject_response, Resp};
use crate::trace::RequestSpan;
use crate::verify::{precheck, verify};

/// Counts a request in the in-flight gauge until dropped: also when hyper drops the
/// request's future because the client hung up.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `POST /webhooks/{source}`: answer 200 once the broker acknowledged the record.
pub async fn webhook(app: &App, source_name: &str, req: Request<Incoming>) -> Resp {
    let span = app.tracer.start(req.headers());
    let known = app.sources.get(source_name);
    // Unknown names share one label, so a scanner cannot grow the metric without bound.
    let label = if known.is_some() { source_name } else { "unknown" };
    let outcome = match (known, req.method()) {
        (_, m) if m != Method::POST => Err(Reject::MethodNotAllowed),
        (None, _) => Err(Reject::UnknownSource(source_name.to_owned())),
        (Some(source), _) => match app.in_flight.clone().try_acquire_owned() {
            Err(_) => Err(Reject::Overloaded),
            Ok(_permit) => {
                let _counted = InFlight::enter(&app.metrics.in_flight);
                accept(app, source_name, source, req, &span).await
            }
        },
    };
    let resp = match &outcome {
        Ok((event_id, d)) => json_response(
            200,
            &json!({ "received": true, "event_id": event_id, "partition": d.partition, "offset": d.offset }),
        ),
        Err(r) => {
            app.metrics.rejections.with_label_values(&[label, r.code()]).inc();
            tracing::info!(source = label, outcome = r.code(), status = r.status(), trace_id = %span.trace_id(), "webhook rejected");
            reject_response(app, r)
        }
    };
    let status = resp.status().as_u16();
    app.metrics
        .requests
        .with_label_values(&[label, resp.status().as_str()])
        .inc();
    span.end(status);
    resp
}

/// Read, verify, extract, publish. Returns the event id and where Kafka put it.
async fn accept(
    app: &App,
    source_name: &str,
    source: &Source,
    req: Request<Incoming>,
    span: &RequestSpan,
) -> Result<(String, Delivered), Reject> {
    let started = SystemTime::now();
    span.attribute("hookstream.source", source_name.to_owned());
    let (parts, body) = req.into_parts();
    let scheme = source.config.scheme;
    // What can be refused without the body is refused before it is read.
    let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    precheck(
        scheme,
        &parts.headers,
        unix_now.as_secs() as i64,
        source.config.tolerance.as_secs(),
    )
    .map_err(Reject::Verify)?;
    let peer = parts.extensions.get::<Peer>().map(|p| p.0);
    let body = read_body(app, source, &parts.headers, peer, body).await?;
    let body = &body.bytes;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let verified = verify(
        scheme,
        &parts.headers,
        body,
        &source.secrets,
        now.as_secs() as i64,
        source.config.tolerance.as_secs(),
    )
    .map_err(Reject::Verify)?;
    let fields = extract(body, &source.config.fields, verified.event_id).map_err(Reject::Extract)?;
    if fields.ids_disagree {
        app.metrics.id_disagreements.with_label_values(&[source_name]).inc();
    }
    let record = RawWebhook {
        event_id: fields.event_id.clone(),
        source: source_name.to_owned(),
        scheme: scheme.as_str().to_owned(),
        secret_index: verified.secret_index as i32,
        payment_id: fields.payment_id.clone(),
        event_type: fields.event_type,
        sequence: fields.sequence,
        received_at: now.as_millis() as i64,
        headers: scheme
            .signed_headers()
            .iter()
            .filter_map(|h| {
                parts.headers.get(*h).map(|v| HttpHeader {
                    name: (*h).to_owned(),
                    value: v.as_bytes().to_vec(),
                })
            })
            .collect(),
        body: body.to_vec(),
    };
    span.attribute("hookstream.event_id", record.event_id.clone());
    span.attribute("hookstream.payment_id", record.payment_id.clone());
    let value = encode_within_budget(app, source, &record)?;
    app.tracer.phase(span, "ingest.verify", started);
    let publishing = SystemTime::now();
    let published = publish(app, source_name, source, &record, &value, span.traceparent()).await;
    app.tracer.phase(span, "ingest.publish", publishing);
    let d = published?;
    span.attribute("messaging.destination.partition.id", i64::from(d.partition));
    span.attribute("messaging.kafka.offset", d.offset);
    Ok((record.event_id, d))
}

/// The body, read within the source's size limit (Content-Length first, then as it
/// arrives), the body budget, the minimum rate and the body deadline (`crate::body`).
async fn read_body(
    app: &App,
    source: &Source,
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
    body: Incoming,
) -> Result<Body, Reject> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limits = BodyLimits {
        max_bytes: source.config.max_body_bytes,
        deadline: app.http.body_read_timeout,
        grace: app.http.body_grace,
        min_bytes_per_sec: app.http.min_body_bytes_per_sec,
    };
    crate::body::read(&app.body_budget, limits, peer, declared, body).await
}

/// The record's bytes, if they and a dead letter that may carry them later fit the
/// topic's message size: a record the broker would refuse for its size is the
/// sender's problem (413), not a retriable 503.
fn encode_within_budget(app: &App, source: &Source, record: &RawWebhook) -> Result<Vec<u8>, Reject> {
    // Encoding a value built from our own types cannot fail unless the schema and the
    // type disagree, which the schemas crate's tests rule out; answer 503 rather than lose it.
    let value = encode(record).map_err(|e| {
        tracing::error!(error = %e, "RawWebhook does not encode");
        Reject::BrokerUnavailable
    })?;
    let budget = app
        .publisher
        .max_message_bytes()
        .saturating_sub(DEAD_LETTER_RESERVE_BYTES);
    if value.len() + record.payment_id.len() > budget {
        return Err(Reject::PayloadTooLarge {
            limit_bytes: source.config.max_body_bytes,
        });
    }
    Ok(value)
}

/// The trace id of a `traceparent` value (`00-<trace id>-<span id>-<flags>`).
fn trace_id_of(traceparent: &str) -> &str {
    traceparent.get(3..35).unwrap_or_default()
}

/// Publish keyed by payment id and wait for the broker's acknowledgement.
async fn publish(
    app: &App,
    source_name: &str,
    source: &Source,
    record: &RawWebhook,
    value: &[u8],
    traceparent: &str,
) -> Result<Delivered, Reject> {
    let headers = OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: kh::EVENT_ID,
            value: Some(&record.event_id),
        })
        .insert(Header {
            key: kh::SOURCE,
            value: Some(source_name),
        })
        .insert(Header {
            key: kh::TRACEPARENT,
            value: Some(traceparent),
        });
    let started = Instant::now();
    let result = app.publisher.publish(&record.payment_id, value, headers).await;
    app.metrics
        .delivery_seconds
        .with_label_values(&[source_name])
        .observe(started.elapsed().as_secs_f64());
    let (event_id, payment_id) = (&record.event_id, &record.payment_id);
    match result {
        Ok(d) => {
            let end = app
                .metrics
                .raw_end_offset
                .with_label_values(&[&d.partition.to_string()]);
            if end.get() <= d.offset {
                end.set(d.offset + 1);
            }
            // The receipt trail (infra/README.md, Operations): one line per acknowledged webhook,
            // under its own target so that it can be turned off alone
            // (`RUST_LOG=info,hookstream_ingest::received=off`). Its cost is in tests/README.md, benchmarks.
            tracing::info!(
                target: "hookstream_ingest::received",
                %event_id, %payment_id, source = source_name, partition = d.partition, offset = d.offset,
                trace_id = trace_id_of(traceparent), "webhook received"
            );
            Ok(d)
        }
        Err(e) => {
            tracing::warn!(
                %event_id, %payment_id, source = source_name,
                outcome = "not_durable", error = %e, "webhook not acknowledged by the broker"
            );
            Err(match e {
                PublishError::TooLarge(_) => Reject::PayloadTooLarge {
                    limit_bytes: source.config.max_body_bytes,
                },
                PublishError::QueueFull => Reject::QueueFull,
                PublishError::Timeout(_) | PublishError::Broker(_) => Reject::BrokerUnavailable,
            })
        }
    }
}
