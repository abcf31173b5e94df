//! Every metric ingest exposes at `/metrics`, defined in one place.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Ingest's metrics and their registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by source and HTTP status.
    pub requests: IntCounterVec,
    /// Verification and validation failures, by source and error code.
    pub rejections: IntCounterVec,
    /// Accepted requests whose id header and body id differ, by source (the signed
    /// header or the body decides; never refused).
    pub id_disagreements: IntCounterVec,
    /// Time from publishing to the broker's acknowledgement, by source.
    pub delivery_seconds: HistogramVec,
    /// Requests being processed now.
    pub in_flight: IntGauge,
    /// Connections answered 429 and closed because their peer address held its share.
    pub connections_refused: prometheus::IntCounter,
    /// Records queued or in flight in the producer (sampled at scrape).
    pub queue_depth: IntGauge,
    /// One past the highest offset acknowledged per raw partition: the log's end as this
    /// instance knows it (with the processor's `committed_offset`, the lag).
    pub raw_end_offset: IntGaugeVec,
    /// The process's own metrics (resident memory, CPU, open files), unprefixed.
    process: Registry,
}

impl Metrics {
    /// Register every metric. Panics only on a duplicate name, which is a bug here.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("hookstream_ingest".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Webhook requests answered, by source and HTTP status"),
            &["source", "status"],
        )
        .expect("metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "rejections_total",
                "Requests refused, by source and error code (signature_mismatch, ...)",
            ),
            &["source", "reason"],
        )
        .expect("metric");
        let id_disagreements = IntCounterVec::new(
            Opts::new(
                "event_id_disagreements_total",
                "Requests whose id header and body id differ, by source (accepted: a signed header or the body decides)",
            ),
            &["source"],
        )
        .expect("metric");
        let delivery_seconds = HistogramVec::new(
            HistogramOpts::new(
                "delivery_seconds",
                "Time from publish to broker acknowledgement (acks=all)",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["source"],
        )
        .expect("metric");
        let in_flight = IntGauge::new("in_flight_requests", "Requests being processed").expect("metric");
        let connections_refused = prometheus::IntCounter::new(
            "connections_refused_total",
            "Connections answered 429 and closed: their peer address held max_connections_per_peer",
        )
        .expect("metric");
        let queue_depth = IntGauge::new(
            "producer_queue_depth",
            "Records queued or in flight in the Kafka producer",
        )
        .expect("metric");
        let raw_end_offset = IntGaugeVec::new(
            Opts::new(
                "raw_end_offset",
                "One past the highest offset the broker acknowledged, per raw partition",
            ),
            &["partition"],
        )
        .expect("metric");
        let process = Registry::new();
        process
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("a fresh registry");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejections.clone()),
            Box::new(id_disagreements.clone()),
            Box::new(delivery_seconds.clone()),
            Box::new(in_flight.clone()),
            Box::new(connections_refused.clone()),
            Box::new(queue_depth.clone()),
            Box::new(raw_end_offset.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            requests,
            rejections,
            id_disagreements,
            delivery_seconds,
            in_flight,
            connections_refused,
            queue_depth,
            raw_end_offset,
            process,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
