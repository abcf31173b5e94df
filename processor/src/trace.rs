//! Continue the W3C trace context from a raw record's `traceparent` header: the
//! processor's work on a record is a child span of ingest's, and its outputs carry the
//! child's context onward.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span, TraceContextExt, Tracer, TracerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Starts spans for records.
#[derive(Debug)]
pub struct RecordTracer {
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Default for RecordTracer {
    fn default() -> Self {
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("hookstream-processor");
        Self {
            _provider: provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }
    }
}

impl RecordTracer {
    /// A child span of `parent` (a traceparent value); returns the child's traceparent
    /// and trace id, or `None` when the record carries no valid context.
    pub fn child(&self, parent: Option<&str>) -> Option<(String, String)> {
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_owned(), parent?.to_owned());
        let parent_cx = self.propagator.extract(&carrier);
        if !parent_cx.span().span_context().is_valid() {
            return None;
        }
        let mut span = self.tracer.start_with_context("processor.record", &parent_cx);
        let trace_id = span.span_context().trace_id().to_string();
        span.end();
        let cx = parent_cx.with_span(span);
        let mut out = HashMap::new();
        self.propagator.inject_context(&cx, &mut out);
        out.remove("traceparent").map(|tp| (tp, trace_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_the_trace_and_gets_a_new_span() {
        let t = RecordTracer::default();
        let (tp, trace) = t
            .child(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
            .unwrap();
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"),
            "{tp}"
        );
        assert!(t.child(Some("garbage")).is_none());
        assert!(t.child(None).is_none());
    }
}
