//! The whole pipeline for a test, set up once: the shared broker, fresh topics, ingest
//! in process, the processor in process with its own state directory, and an event
//! builder, so a test reads as the rule it checks:
//!
//! ```ignore
//! let mut p = Pipeline::start(1).await;
//! p.send(Event::completed("pay_1").policy("pol_1")).await;
//! p.wait_for_activation("pol_1").await;
//! ```

use std::time::Duration;

use hookstream_processor::ProcessorConfig;
use hookstream_schemas::{error_chain, AvroRecord, DeadLetter, PolicyEvent, PolicyEventKind};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use crate::broker::Broker;
use crate::ingest::RunningIngest;
use crate::processor::{test_config, RunningProcessor, Topics};

/// How long a pipeline test waits for an output.
pub const WAIT: Duration = Duration::from_secs(60);

/// A webhook (of the `paymenthub` source unless told), signed when sent.
#[derive(Debug, Clone)]
pub struct Event {
    source: &'static str,
    id: String,
    payment: String,
    kind: &'static str,
    sequence: Option<i64>,
    policy: Option<String>,
}

impl Event {
    fn of(kind: &'static str, payment: &str) -> Self {
        Self {
            source: "paymenthub",
            id: format!("evt_{payment}_{}", kind.trim_start_matches("payment.")),
            payment: payment.to_owned(),
            kind,
            sequence: None,
            policy: None,
        }
    }

    pub fn created(payment: &str) -> Self {
        Self::of("payment.created", payment)
    }

    pub fn processing(payment: &str) -> Self {
        Self::of("payment.processing", payment)
    }

    pub fn completed(payment: &str) -> Self {
        Self::of("payment.completed", payment)
    }

    pub fn failed(payment: &str) -> Self {
        Self::of("payment.failed", payment)
    }

    pub fn refunded(payment: &str) -> Self {
        Self::of("payment.refunded", payment)
    }

    /// Sent through another of the test configuration's sources (e.g. `stripe`).
    pub fn from(mut self, source: &'static str) -> Self {
        self.source = source;
        self
    }

    /// Its event id (default `evt_<payment>_<kind>`).
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }

    pub fn seq(mut self, sequence: i64) -> Self {
        self.sequence = Some(sequence);
        self
    }

    pub fn policy(mut self, policy: &str) -> Self {
        self.policy = Some(policy.to_owned());
        self
    }

    /// Send it through the ingest at `addr`, signed; panics unless answered 200.
    pub async fn send_to(self, addr: &str) {
        let policy = self.policy.as_deref();
        let body = crate::sign::payment_body(&self.id, &self.payment, self.sequence, self.kind, policy);
        crate::sign::send_body_from(addr, self.source, &self.id, body).await;
    }
}

/// Sequence `seq` of the troublemakers' gapped payment.
fn gap(e: Event, seq: i64) -> Event {
    e.id(&format!("evt_gap_{seq}")).seq(seq).policy("pol_gap")
}

/// The record's value decoded as `T`; panics (the test's report) when it is not one.
pub fn decode_payload<T: AvroRecord>(m: &OwnedMessage) -> T {
    let value = m.payload().unwrap_or_default();
    hookstream_schemas::decode(value).unwrap_or_else(|e| {
        panic!(
            "offset {} is no {}: {}",
            m.offset(),
            std::any::type_name::<T>(),
            error_chain(&e)
        )
    })
}

/// Broker, topics, ingest and processor of one test.
#[allow(missing_debug_implementations)] // running services
pub struct Pipeline {
    pub broker: &'static Broker,
    pub topics: Topics,
    /// The processor's configuration (its own group and state directory).
    pub config: ProcessorConfig,
    pub ingest: RunningIngest,
    pub processor: Option<RunningProcessor>,
    _state: tempfile::TempDir,
}

impl Pipeline {
    /// A pipeline whose raw topic has `partitions` partitions, the processor running.
    pub async fn start(partitions: i32) -> Self {
        let broker = Broker::shared();
        let topics = Topics::create(broker.bootstrap(), partitions).await;
        let state = tempfile::tempdir().expect("state directory");
        let config = test_config(broker.bootstrap(), &topics, state.path());
        let ingest = crate::ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
        let processor = Some(RunningProcessor::start(config.clone()).await);
        Self {
            broker,
            topics,
            config,
            ingest,
            processor,
            _state: state,
        }
    }

    pub fn bootstrap(&self) -> &str {
        self.broker.bootstrap()
    }

    /// Send `e` through ingest, signed; panics unless answered 200.
    pub async fn send(&self, e: Event) {
        e.send_to(&self.ingest.addr()).await;
    }

    /// Send `event_id` with exactly `body` (e.g. a second body under a known id), signed.
    pub async fn send_body(&self, event_id: &str, body: Vec<u8>) {
        crate::sign::send_body(&self.ingest.addr(), event_id, body).await;
    }

    /// What must become dead letters or a notice, beside ordinary traffic: a completion
    /// without a policy (`pay_nopol`), a second payment (`pay_twice`) for `active` once it
    /// is active (payments on other partitions are decided in no fixed order), an event id
    /// (`evt_conflict`) sent again with another body, and a gap: sequences 1 and 3
    /// (completed) of `pay_gap` for `pol_gap`; its 2 is [`Pipeline::send_the_late_gap`].
    pub async fn send_the_troublemakers(&self, active: &str) {
        self.send(Event::completed("pay_nopol").id("evt_nopol")).await;
        self.wait_for_activation(active).await;
        self.send(Event::completed("pay_twice").id("evt_twice").policy(active))
            .await;
        self.send(Event::created("pay_conflict").id("evt_conflict")).await;
        let mut other = crate::sign::payment_body("evt_conflict", "pay_conflict", None, "payment.created", None);
        other.push(b' ');
        self.send_body("evt_conflict", other).await;
        self.send(gap(Event::created("pay_gap"), 1)).await;
        self.send(gap(Event::completed("pay_gap"), 3)).await;
    }

    /// Sequence 2 of [`Pipeline::send_the_troublemakers`]'s gap: stale once the gap timed out.
    pub async fn send_the_late_gap(&self) {
        self.send(gap(Event::processing("pay_gap"), 2)).await;
    }

    /// The first `want` records of `policy.activations` (read committed), decoded; panics
    /// when fewer arrive within [`WAIT`].
    pub async fn policy_events(&self, want: usize) -> Vec<PolicyEventKind> {
        let records = crate::kafka::read_records(self.bootstrap(), &self.topics.activations, want, WAIT).await;
        records.iter().map(|m| decode_payload::<PolicyEvent>(m).event).collect()
    }

    /// The first `want` dead letters, decoded; panics when fewer arrive within [`WAIT`].
    pub async fn dead_letters(&self, want: usize) -> Vec<DeadLetter> {
        let records = crate::kafka::read_records(self.bootstrap(), &self.topics.dlq, want, WAIT).await;
        records.iter().map(decode_payload::<DeadLetter>).collect()
    }

    /// GET `path` on the processor's admin API.
    pub async fn admin_get(&self, path: &str) -> crate::http::Reply {
        crate::http::get(self.admin(), path).await
    }

    /// The processor's `/metrics` text.
    pub async fn metrics(&self) -> String {
        String::from_utf8_lossy(&self.admin_get("/metrics").await.body).into_owned()
    }

    /// Wait until `policy` is activated on `policy.activations`.
    pub async fn wait_for_activation(&self, policy: &str) {
        crate::kafka::wait_for_activation(self.bootstrap(), &self.topics.activations, policy, WAIT).await;
    }

    /// The processor's admin address.
    pub fn admin(&self) -> &str {
        &self.processor.as_ref().expect("the processor runs").admin
    }

    /// Stop the processor (a clean hand-over).
    pub async fn stop_processor(&mut self) {
        if let Some(p) = self.processor.take() {
            p.stop().await;
        }
    }

    /// Start the processor again, with the same configuration and state directory.
    pub async fn start_processor(&mut self) {
        self.stop_processor().await;
        self.processor = Some(RunningProcessor::start(self.config.clone()).await);
    }

    /// Stop everything.
    pub async fn stop(mut self) {
        self.stop_processor().await;
        self.ingest.stop().await;
    }
}
