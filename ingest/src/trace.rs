//! W3C trace context per request: continue the caller's `traceparent` when it sends a
//! valid one, else start a trace; the resulting context goes into the Kafka record's
//! `traceparent` header so the processor's spans join the same trace. The request's span
//! (`ingest.webhook`, with source, event id, payment id, partition, offset and status)
//! and its phases (`ingest.verify`, `ingest.publish`) are exported over OTLP when
//! `[tracing]` names an endpoint ([`hookstream_schemas::telemetry`]).

use std::collections::HashMap;
use std::time::SystemTime;

use hookstream_schemas::telemetry::{TelemetryError, TracingConfig};
use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The spans' `service.name` unless `[tracing] service_name` says otherwise.
pub const SERVICE_NAME: &str = "hookstream-ingest";

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Starts a span per request, and exports the spans when `[tracing]` says where to.
#[derive(Debug)]
pub struct RequestTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl RequestTracer {
    /// A tracer with `config`'s sampler and exporter (none unless an endpoint is set:
    /// then ids and propagation only).
    pub fn new(config: &TracingConfig) -> Result<Self, TelemetryError> {
        let provider = config.provider(SERVICE_NAME)?;
        let tracer = provider.tracer("hookstream-ingest");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Start the span for a request with these headers.
    pub fn start(&self, headers: &HeaderMap) -> RequestSpan {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder("ingest.webhook")
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        let mut carrier = HashMap::new();
        self.propagator.inject_context(&cx, &mut carrier);
        RequestSpan {
            traceparent: carrier.remove("traceparent").unwrap_or_default(),
            cx,
        }
    }

    /// A finished phase of `request` (`ingest.verify`, `ingest.publish`) from `started` to now.
    pub fn phase(&self, request: &RequestSpan, name: &'static str, started: SystemTime) {
        if !request.cx.span().is_recording() {
            return;
        }
        let kind = if name == "ingest.publish" {
            SpanKind::Producer
        } else {
            SpanKind::Internal
        };
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(started)
            .start_with_context(&self.tracer, &request.cx);
        span.end();
    }

    /// Send what is queued and stop exporting (blocks up to the exporter's timeout).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "tracer shutdown");
        }
    }
}

/// The request's span and its `traceparent` value.
#[derive(Debug)]
pub struct RequestSpan {
    cx: Context,
    traceparent: String,
}

impl RequestSpan {
    /// `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The trace id as hex, for logs.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Record an attribute of the request (source, event id, partition, ...).
    pub fn attribute(&self, key: &'static str, value: impl Into<Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// End the span, recording the HTTP status.
    pub fn end(self, status: u16) {
        let span = self.cx.span();
        span.set_attribute(opentelemetry::KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        span.end();
    }
}
