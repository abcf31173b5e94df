//! W3C trace context per request: continue the caller's `traceparent` when it sends a
//! valid one, else start a trace; the resulting context goes into the Kafka record's
//! `traceparent` header so the processor's spans join the same trace.

use std::collections::HashMap;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Starts a span per request.
#[derive(Debug)]
pub struct RequestTracer {
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Default for RequestTracer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestTracer {
    /// A tracer with no exporter: ids and propagation only. An OTLP exporter can be
    /// added to the provider without touching callers.
    pub fn new() -> Self {
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("hookstream-ingest");
        Self {
            _provider: provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }
    }

    /// Start the span for a request with these headers.
    pub fn start(&self, headers: &HeaderMap) -> RequestSpan {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self.tracer.start_with_context("ingest.webhook", &parent);
        let cx = parent.with_span(span);
        let mut carrier = HashMap::new();
        self.propagator.inject_context(&cx, &mut carrier);
        RequestSpan {
            traceparent: carrier.remove("traceparent").unwrap_or_default(),
            cx,
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
