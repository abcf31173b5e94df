//! Continue the W3C trace context from a raw record's `traceparent` header: the
//! processor's work on a record is a child span of ingest's (`processor.record`, with
//! its stage, partition, offset and outcome, and its phases `processor.decide`,
//! `processor.emit`, `processor.persist`, and `processor.commit` once the group's offset
//! covers it), and its outputs carry the record span's
//! context onward, so a downstream consumer continues the same trace. Spans are exported
//! over OTLP when `[tracing]` names an endpoint ([`hookstream_schemas::telemetry`]).

use std::collections::HashMap;
use std::time::SystemTime;

use hookstream_schemas::telemetry::{TelemetryError, TracingConfig};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span, SpanContext, SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The spans' `service.name` unless `[tracing] service_name` says otherwise.
pub const SERVICE_NAME: &str = "hookstream-processor";

/// Starts spans for records.
#[derive(Debug)]
pub struct RecordTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Default for RecordTracer {
    /// No export: ids and propagation only.
    fn default() -> Self {
        Self::from_provider(SdkTracerProvider::builder().build())
    }
}

/// One record's span, open from its decision until its batch is persisted.
#[derive(Debug)]
pub struct RecordSpan {
    cx: Context,
    /// The record's offset in its input partition.
    pub offset: i64,
    /// The record span's context, for the outputs' `traceparent` header.
    pub traceparent: String,
    /// The trace id as hex, for logs.
    pub trace_id: String,
}

impl RecordTracer {
    /// A tracer with `config`'s sampler and exporter.
    pub fn new(config: &TracingConfig) -> Result<Self, TelemetryError> {
        Ok(Self::from_provider(config.provider(SERVICE_NAME)?))
    }

    fn from_provider(provider: SdkTracerProvider) -> Self {
        let tracer = provider.tracer("hookstream-processor");
        Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }
    }

    /// The span of the record at `offset`, a child of `parent` (a traceparent value),
    /// started at `started`; `None` when the record carries no valid context.
    pub fn start(&self, parent: Option<&str>, started: SystemTime, at: (&'static str, i32, i64)) -> Option<RecordSpan> {
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_owned(), parent?.to_owned());
        let parent_cx = self.propagator.extract(&carrier);
        if !parent_cx.span().span_context().is_valid() {
            return None;
        }
        let (stage, partition, offset) = at;
        let span = self
            .tracer
            .span_builder("processor.record")
            .with_kind(SpanKind::Consumer)
            .with_start_time(started)
            .with_attributes([
                KeyValue::new("hookstream.stage", stage),
                KeyValue::new("messaging.destination.partition.id", i64::from(partition)),
                KeyValue::new("messaging.kafka.offset", offset),
            ])
            .start_with_context(&self.tracer, &parent_cx);
        let trace_id = span.span_context().trace_id().to_string();
        let cx = parent_cx.with_span(span);
        let mut out = HashMap::new();
        self.propagator.inject_context(&cx, &mut out);
        let traceparent = out.remove("traceparent")?;
        Some(RecordSpan {
            cx,
            offset,
            traceparent,
            trace_id,
        })
    }

    /// A child span of `parent` started and ended at once: its traceparent and trace id
    /// (for a consumer that continues the trace without timing anything).
    pub fn child(&self, parent: Option<&str>) -> Option<(String, String)> {
        let span = self.start(parent, SystemTime::now(), ("consumer", -1, -1))?;
        let out = (span.traceparent.clone(), span.trace_id.clone());
        span.end();
        Some(out)
    }

    /// A finished phase of `record` (`processor.decide`, `processor.emit`,
    /// `processor.persist`) from `started` to `ended`.
    pub fn phase(&self, record: &RecordSpan, name: &'static str, started: SystemTime, ended: SystemTime) {
        if !record.cx.span().is_recording() {
            return;
        }
        let mut span = self
            .tracer
            .span_builder(name)
            .with_start_time(started)
            .start_with_context(&self.tracer, &record.cx);
        span.end_with_timestamp(ended);
    }

    /// The commit that covers a record whose span (ended) had `record` as its context:
    /// a `processor.commit` child from `started` to `ended`, with the committed offset
    /// (the periodic commit is asynchronous: `ended` is when it was sent).
    pub fn commit(&self, record: &SpanContext, next: i64, started: SystemTime, ended: SystemTime) {
        let parent = Context::new().with_remote_span_context(record.clone());
        let mut span = self
            .tracer
            .span_builder("processor.commit")
            .with_start_time(started)
            .with_attributes([KeyValue::new("messaging.kafka.committed_offset", next)])
            .start_with_context(&self.tracer, &parent);
        span.end_with_timestamp(ended);
    }

    /// Send what is queued and stop exporting (blocks up to the exporter's timeout).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "tracer shutdown");
        }
    }
}

impl RecordSpan {
    /// Record the decision's outcome.
    pub fn outcome(&self, outcome: &str) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("hookstream.outcome", outcome.to_owned()));
    }

    /// End the record's span; its context when it is sampled (for the commit's span).
    pub fn end(self) -> Option<SpanContext> {
        let span = self.cx.span();
        span.end();
        let sc = span.span_context();
        sc.is_sampled().then(|| sc.clone())
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
