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

impl Metrics {
    /// Register every metric. Panics only on a duplicate name, which is a bug here.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("hookstream_processor".into()), None).expect("valid prefix");
        let m = Self {
            registry,
            records: IntCounterVec::new(
                Opts::new("records_total", "Records decided, by stage (payments, policies) and outcome"),
                &["stage", "outcome"],
            )
            .expect("metric"),
            dead_letters: IntCounterVec::new(
                Opts::new("dead_letters_total", "Dead letters written, by reason"),
                &["reason"],
            )
            .expect("metric"),
            activations: IntCounter::new("activations_total", "PolicyActivated events written").expect("metric"),
            cancellations: IntCounter::new("cancellations_total", "PolicyCancelled events written").expect("metric"),
            duplicate_payments: IntCounter::new(
                "duplicate_payments_total",
                "PolicyPaymentDuplicated events written: completed payments for a policy another payment holds",
            )
            .expect("metric"),
            policy_requests: IntCounter::new(
                "policy_requests_total",
                "Activation and cancellation requests written by the payment stage to the policy stage",
            )
            .expect("metric"),
            held_events: IntGauge::new("held_events", "Events held for a sequence gap").expect("metric"),
            partition_workers: IntGaugeVec::new(
                Opts::new(
                    "partition_workers",
                    "Partition workers by stage and lifecycle phase (created, restoring, running, rebuilding, fenced)",
                ),
                &["stage", "phase"],
            )
            .expect("metric"),
            partitions_stalled: IntGauge::new(
                "partitions_stalled",
                "Partitions retrying a write the broker refuses for good (changelog entry, control record)",
            )
            .expect("metric"),
            partition_holes: IntGauge::new(
                "partition_holes",
                "Partitions stopped because records above their state are gone from the log (a hole); \
                 acknowledge with POST /holes/{topic}/{partition}/acknowledge",
            )
            .expect("metric"),
            rebuilt_records: IntCounter::new("rebuilt_records_total", "Records folded while rebuilding state")
                .expect("metric"),
            changelog_records: IntCounter::new(
                "changelog_records_total",
                "State changes written to the changelog topics (a batch's entries and its closing meta entry)",
            )
            .expect("metric"),
            restored_records: IntCounter::new(
                "restored_records_total",
                "Changelog records read back to restore a partition's state",
            )
            .expect("metric"),
            retries: IntCounterVec::new(Opts::new("retries_total", "Retries of transient failures"), &["what"])
                .expect("metric"),
            lag: IntGaugeVec::new(
                Opts::new("consumer_lag", "Records behind the partition's end"),
                &["topic", "partition"],
            )
            .expect("metric"),
            processing_seconds: Histogram::with_opts(
                HistogramOpts::new("processing_seconds", "Record timestamp to committed decision").buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )
            .expect("metric"),
            gap_timeouts: IntCounter::new("gap_timeouts_total", "GapTimeout control records written").expect("metric"),
            replays_detected: IntCounter::new(
                "replays_detected_total",
                "Partitions rebuilt because the group's offset was moved back (processor replay)",
            )
            .expect("metric"),
            skipped_refetched: IntCounter::new(
                "skipped_refetched_total",
                "Holes in a delivered batch (records that arrive out of order after an assignment) read from the log first",
            )
            .expect("metric"),
            outputs_refused: IntCounter::new(
                "outputs_refused_total",
                "Outputs the broker refused for good (too large, invalid, unauthorised), replaced by a smaller dead letter",
            )
            .expect("metric"),
            corrupt_rebuilds: IntCounter::new(
                "corrupt_rebuilds_total",
                "Partitions whose stored state did not read back and was rebuilt from the log",
            )
            .expect("metric"),
            rewinds: IntCounter::new(
                "rewinds_total",
                "Partitions that restored their committed state after an aborted transaction",
            )
            .expect("metric"),
            fenced: IntCounter::new(
                "changelog_fenced_total",
                "Partitions that stopped writing because another owner claimed their changelog (at least once)",
            )
            .expect("metric"),
            transactions: IntCounterVec::new(
                Opts::new("transactions_total", "Transactions by stage and outcome (committed, aborted, fenced, hung)"),
                &["stage", "outcome"],
            )
            .expect("metric"),
            committed_offset: IntGaugeVec::new(
                Opts::new(
                    "committed_offset",
                    "Offset last committed per input partition, by stage (payments: the raw topic)",
                ),
                &["stage", "partition"],
            )
            .expect("metric"),
            rebalances: IntCounterVec::new(
                Opts::new("rebalances_total", "Rebalances seen by the group consumers, by kind"),
                &["kind"],
            )
            .expect("metric"),
            process: process_registry(),
        };
        // Every reason from the start, so that a rate by reason exists (as 0) before the
        // first dead letter.
        for reason in hookstream_schemas::DeadLetterReason::ALL {
            m.dead_letters.with_label_values(&[reason.as_str()]);
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.records.clone()),
            Box::new(m.dead_letters.clone()),
            Box::new(m.activations.clone()),
            Box::new(m.cancellations.clone()),
            Box::new(m.duplicate_payments.clone()),
            Box::new(m.policy_requests.clone()),
            Box::new(m.held_events.clone()),
            Box::new(m.partition_holes.clone()),
            Box::new(m.partitions_stalled.clone()),
            Box::new(m.partition_workers.clone()),
            Box::new(m.rebuilt_records.clone()),
            Box::new(m.changelog_records.clone()),
            Box::new(m.restored_records.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.lag.clone()),
            Box::new(m.processing_seconds.clone()),
            Box::new(m.gap_timeouts.clone()),
            Box::new(m.replays_detected.clone()),
            Box::new(m.skipped_refetched.clone()),
            Box::new(m.outputs_refused.clone()),
            Box::new(m.corrupt_rebuilds.clone()),
            Box::new(m.rewinds.clone()),
            Box::new(m.fenced.clone()),
            Box::new(m.transactions.clone()),
            Box::new(m.committed_offset.clone()),
            Box::new(m.rebalances.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("unique metric names");
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
