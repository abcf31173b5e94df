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
    /// then ids and propagation only). The caller is not trusted: its `traceparent`
    /// gives the trace id, never the sampling decision
    /// ([`TracingConfig::at_the_edge`]).
    pub fn new(config: &TracingConfig) -> Result<Self, TelemetryError> {
        let provider = config.at_the_edge().provider(SERVICE_NAME)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_traceparent(flags: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        h.insert("traceparent", value.parse().unwrap());
        h
    }

    #[test]
    fn a_callers_sampled_flag_continues_the_trace_but_never_forces_it_to_be_kept() {
        let config = TracingConfig {
            sampler: "parentbased_always_off".into(),
            ..TracingConfig::default()
        };
        let tracer = RequestTracer::new(&config).unwrap();
        let span = tracer.start(&with_traceparent("01"));
        assert_eq!(
            span.trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "the caller's trace goes on"
        );
        assert!(!span.cx.span().is_recording(), "but this service decides what is kept");
        assert!(span.traceparent().ends_with("-00"), "{}", span.traceparent());
        let kept = RequestTracer::new(&TracingConfig::default()).unwrap();
        assert!(
            kept.start(&with_traceparent("00")).cx.span().is_recording(),
            "and keeps it when told to"
        );
    }
}
