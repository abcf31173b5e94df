//! Every metric the processor exposes at `/metrics`, defined in one place.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The processor's metrics and their registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records decided, by outcome (applied, held, duplicate, superseded, dead_lettered, ...).
    pub records: IntCounterVec,
    /// Dead letters written, by reason.
    pub dead_letters: IntCounterVec,
    /// PolicyActivated events written.
    pub activations: IntCounter,
    /// PolicyCancelled events written.
    pub cancellations: IntCounter,
    /// PolicyPaymentDuplicated events written.
    pub duplicate_payments: IntCounter,
    /// Requests the payment stage wrote to the policy stage.
    pub policy_requests: IntCounter,
    /// Events held for a sequence gap, now.
    pub held_events: IntGauge,
    /// Partitions stopped at a hole in their log, waiting for an operator.
    pub partition_holes: IntGauge,
    /// Partitions retrying a write the broker refuses for good (a changelog entry, a
    /// control record): stopped, loudly, until it passes.
    pub partitions_stalled: IntGauge,
    /// Partition workers by stage and lifecycle phase (`partition::lifecycle`).
    pub partition_workers: IntGaugeVec,
    /// Records folded while rebuilding state from the log (outputs suppressed).
    pub rebuilt_records: IntCounter,
    /// State changes written to the changelogs (meta entries included).
    pub changelog_records: IntCounter,
    /// Changelog records read back to restore state.
    pub restored_records: IntCounter,
    /// Retries of transient failures, by what failed (emit, store, registry).
    pub retries: IntCounterVec,
    /// Consumer lag per partition (from librdkafka statistics).
    pub lag: IntGaugeVec,
    /// Time from a record's Kafka timestamp to its batch being committed.
    pub processing_seconds: Histogram,
    /// GapTimeout control records written.
    pub gap_timeouts: IntCounter,
    /// Partitions whose state was dropped because the group's offset was moved back.
    pub replays_detected: IntCounter,
    /// Holes in a delivered batch (records fetched before a partition's queue was split
    /// off arrive late) read from the log first.
    pub skipped_refetched: IntCounter,
    /// Outputs the broker refused for good, replaced by a smaller dead letter.
    pub outputs_refused: IntCounter,
    /// Partitions rebuilt from the log because their stored state did not read back.
    pub corrupt_rebuilds: IntCounter,
    /// Partitions that restored their state and decided again: under exactly-once after
    /// an aborted transaction, at least once after another writer wrote their changelog.
    pub rewinds: IntCounter,
    /// At least once, partitions that stopped writing because another owner claimed
    /// their changelog (this instance was paused past its session).
    pub fenced: IntCounter,
    /// Under exactly-once, transactions by outcome (committed, aborted, fenced: the producer replaced, hung: a call that did not return, so replaced).
    pub transactions: IntCounterVec,
    /// The offset last committed per input partition, by stage (a periodic commit is
    /// asynchronous: the offset as sent; the next one supersedes a lost one). With
    /// ingest's `raw_end_offset` it gives the lag even while the processor is down.
    pub committed_offset: IntGaugeVec,
    /// Rebalances seen by this instance's group consumers, by kind (assigned, revoked).
    pub rebalances: IntCounterVec,
    /// The process's own metrics (resident memory, CPU, open files), unprefixed as
    /// every Prometheus client names them.
    process: Registry,
}

/// Makes each metric and registers it at once, so none is defined and left out of
/// `/metrics`. Panics only on an invalid or duplicate name, which is a bug here.
struct Maker(Registry);

#[allow(clippy::expect_used)]
impl Maker {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique metric names");
        c
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("metric"))
    }
    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("metric"))
    }
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("metric"))
    }
    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.add(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("metric"))
    }
}

impl Metrics {
    /// Register every metric.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let mk = Maker(Registry::new_custom(Some("hookstream_processor".into()), None).expect("valid prefix"));
        let m = Self {
            records: mk.counters("records_total", "Records decided, by stage (payments, policies) and outcome", &["stage", "outcome"]),
            dead_letters: mk.counters("dead_letters_total", "Dead letters written, by reason", &["reason"]),
            activations: mk.counter("activations_total", "PolicyActivated events written"),
            cancellations: mk.counter("cancellations_total", "PolicyCancelled events written"),
            duplicate_payments: mk.counter("duplicate_payments_total", "PolicyPaymentDuplicated events written: completed payments for a policy another payment holds"),
            policy_requests: mk.counter("policy_requests_total", "Activation and cancellation requests written by the payment stage to the policy stage"),
            held_events: mk.gauge("held_events", "Events held for a sequence gap"),
            partition_holes: mk.gauge("partition_holes", "Partitions stopped because records above their state are gone from the log (a hole); acknowledge with POST /holes/{topic}/{partition}/acknowledge"),
            partitions_stalled: mk.gauge("partitions_stalled", "Partitions retrying a write the broker refuses for good (changelog entry, control record)"),
            partition_workers: mk.gauges("partition_workers", "Partition workers by stage and lifecycle phase (created, restoring, running, rebuilding, fenced)", &["stage", "phase"]),
            rebuilt_records: mk.counter("rebuilt_records_total", "Records folded while rebuilding state"),
            changelog_records: mk.counter("changelog_records_total", "State changes written to the changelog topics (a batch's entries and its closing meta entry)"),
            restored_records: mk.counter("restored_records_total", "Changelog records read back to restore a partition's state"),
            retries: mk.counters("retries_total", "Retries of transient failures", &["what"]),
            lag: mk.gauges("consumer_lag", "Records behind the partition's end", &["topic", "partition"]),
            processing_seconds: mk.histogram("processing_seconds", "Record timestamp to committed decision", vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            gap_timeouts: mk.counter("gap_timeouts_total", "GapTimeout control records written"),
            replays_detected: mk.counter("replays_detected_total", "Partitions rebuilt because the group's offset was moved back (processor replay)"),
            skipped_refetched: mk.counter("skipped_refetched_total", "Holes in a delivered batch (records that arrive out of order after an assignment) read from the log first"),
            outputs_refused: mk.counter("outputs_refused_total", "Outputs the broker refused for good (too large, invalid, unauthorised), replaced by a smaller dead letter"),
            corrupt_rebuilds: mk.counter("corrupt_rebuilds_total", "Partitions whose stored state did not read back and was rebuilt from the log"),
            rewinds: mk.counter("rewinds_total", "Partitions that restored their committed state after an aborted transaction"),
            fenced: mk.counter("changelog_fenced_total", "Partitions that stopped writing because another owner claimed their changelog (at least once)"),
            transactions: mk.counters("transactions_total", "Transactions by stage and outcome (committed, aborted, fenced, hung)", &["stage", "outcome"]),
            committed_offset: mk.gauges("committed_offset", "Offset last committed per input partition, by stage (payments: the raw topic)", &["stage", "partition"]),
            rebalances: mk.counters("rebalances_total", "Rebalances seen by the group consumers, by kind", &["kind"]),
            registry: mk.0,
            process: process_registry(),
        };
        // Every reason from the start, so that a rate by reason exists (as 0) before the
        // first dead letter.
        for reason in hookstream_schemas::DeadLetterReason::ALL {
            m.dead_letters.with_label_values(&[reason.as_str()]);
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A registry with the process collector (`process_resident_memory_bytes`, ...).
#[allow(clippy::expect_used)]
fn process_registry() -> Registry {
    let r = Registry::new();
    r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("a fresh registry");
    r
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
