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

use crate::broker::Broker;
use crate::ingest::RunningIngest;
use crate::processor::{test_config, RunningProcessor, Topics};

/// How long a pipeline test waits for an output.
pub const WAIT: Duration = Duration::from_secs(60);

/// A webhook of the `paymenthub` source, signed when sent.
#[derive(Debug, Clone)]
pub struct Event {
    id: String,
    payment: String,
    kind: &'static str,
    sequence: Option<i64>,
    policy: Option<String>,
}

impl Event {
    fn of(kind: &'static str, payment: &str) -> Self {
        Self {
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
        crate::sign::send_event(
            &self.ingest.addr(),
            &e.id,
            &e.payment,
            e.sequence,
            e.kind,
            e.policy.as_deref(),
        )
        .await;
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
