//! The one long-lived Kafka producer and what "published" means: the broker acknowledged
//! the record with `acks=all` from an idempotent producer, within the ack deadline.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::KafkaConfig;

/// Where the broker wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record is not known to be durable. All of these are retriable: the request is
/// answered 503 with `Retry-After`, and the provider's retry is deduplicated downstream.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The producer's bounded queue is full (the broker is slow or away).
    #[error("producer queue is full")]
    QueueFull,
    /// No acknowledgement within the ack deadline.
    #[error("no broker acknowledgement within {0:?}")]
    Timeout(Duration),
    /// The broker or client reported a delivery failure.
    #[error("delivery failed")]
    Broker(#[source] KafkaError),
    /// The record is larger than the producer or the broker takes: permanent.
    #[error("record too large for the topic")]
    TooLarge(#[source] KafkaError),
}

/// A delivery error, with a refusal for size told apart (retrying cannot help it).
fn classify(e: KafkaError) -> PublishError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => PublishError::TooLarge(e),
        _ => PublishError::Broker(e),
    }
}

/// Why ingest is not ready to accept webhooks (`/readyz` answers 503 with it).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The idempotent producer hit a fatal error; the next request replaces it.
    #[error("the producer hit a fatal error ({code}: {reason}); it is replaced on the next request")]
    Fatal { code: String, reason: String },
    /// Deliveries keep failing; the producer is being replaced.
    #[error("the last {failed} deliveries failed; the producer is being replaced")]
    Failing { failed: u32 },
    /// The broker did not answer a metadata request.
    #[error("broker unreachable")]
    Unreachable(#[source] KafkaError),
    /// The broker answered but does not know the topic.
    #[error("topic {topic} does not exist")]
    NoTopic { topic: String },
    /// The check itself did not finish (its blocking task panicked or was cancelled).
    #[error("readiness check failed")]
    Check(#[source] tokio::task::JoinError),
}

/// Deliveries that fail in a row before the producer counts as stuck and is replaced.
const STUCK_AFTER: u32 = 3;
/// A stuck producer is replaced at most this often (a broker that is simply away fails
/// every delivery too, and a new producer does not help it).
const REPLACE_AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// The producer in use, with a generation that tells a replaced one apart.
struct Current {
    generation: u64,
    producer: FutureProducer,
    since: Instant,
}

/// The shared producer. An idempotent producer can get stuck for good: after a fatal
/// error it refuses every record, and a broker that no longer knows its producer id
/// (a broker that lost its state; an expired id) answers UNKNOWN_PRODUCER_ID to every
/// epoch librdkafka bumps to, so every delivery times out. Either way the producer is
/// replaced by a new one (which asks the broker for a new id): on a fatal error at
/// once, else after [`STUCK_AFTER`] failed deliveries in a row. `/readyz` says not ready
/// meanwhile.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<RwLock<Current>>,
    /// Deliveries of the current producer that failed in a row.
    failures: Arc<AtomicU32>,
    config: KafkaConfig,
    topic: String,
    ack_deadline: Duration,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Create the producer. Fails only on an invalid client configuration; an absent
    /// broker shows up later as 503s and in `/readyz`.
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: Arc::new(RwLock::new(Current {
                generation: 0,
                producer: Self::producer(cfg)?,
                since: Instant::now(),
            })),
            failures: Arc::new(AtomicU32::new(0)),
            config: cfg.clone(),
            topic: cfg.topic.clone(),
            ack_deadline: cfg.ack_deadline,
            max_message_bytes: cfg.max_message_bytes as usize,
        })
    }

    /// The producer: the passthrough properties, then the write contract (principle 2,
    /// "2xx means durable": `acks=all`, idempotence, Java-compatible partitioning, no
    /// topic auto-creation; [`hookstream_schemas::topics::PRODUCER_SETTINGS`]), then
    /// ingest's own settings.
    fn producer(cfg: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
        let mut c = ClientConfig::new();
        for (k, v) in &cfg.librdkafka {
            c.set(k, v);
        }
        for (k, v) in hookstream_schemas::topics::PRODUCER_SETTINGS {
            c.set(*k, *v);
        }
        c.set("bootstrap.servers", &cfg.brokers)
            .set("client.id", &cfg.client_id)
            // Give up on a record when the request that carries it has been answered 503:
            // a later delivery would only be a duplicate of the provider's retry.
            .set("message.timeout.ms", cfg.ack_deadline.as_millis().to_string())
            // Bounded memory: a full queue answers 503 instead of growing.
            .set("queue.buffering.max.messages", cfg.queue_max_messages.to_string())
            // Batch under load; costs at most this much latency when quiet.
            .set("linger.ms", cfg.linger.as_millis().to_string())
            // The record size budget (see KafkaConfig::max_message_bytes).
            .set("message.max.bytes", cfg.max_message_bytes.to_string())
            .create()
    }

    /// The producer in use and its generation.
    fn current(&self) -> (u64, FutureProducer) {
        let c = self.producer.read().unwrap_or_else(|p| p.into_inner());
        (c.generation, c.producer.clone())
    }

    /// Count a delivery of generation `generation`'s producer, and replace that producer
    /// when it is stuck (see [`Publisher`]).
    fn after_delivery(&self, generation: u64, producer: &FutureProducer, result: &Result<Delivered, PublishError>) {
        let failed = match result {
            Ok(_) => false,
            Err(PublishError::Timeout(_) | PublishError::Broker(_)) => true,
            // A full queue or a record too large says nothing about the producer.
            Err(PublishError::QueueFull | PublishError::TooLarge(_)) => return,
        };
        if generation != self.producer.read().unwrap_or_else(|p| p.into_inner()).generation {
            return; // a delivery of a producer already replaced
        }
        if !failed {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let in_a_row = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let fatal = producer.client().fatal_error();
        if fatal.is_none() && in_a_row < STUCK_AFTER {
            return;
        }
        let mut c = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if c.generation != generation || (fatal.is_none() && c.since.elapsed() < REPLACE_AT_MOST_EVERY) {
            return;
        }
        match Self::producer(&self.config) {
            Ok(p) => {
                tracing::error!(fatal = ?fatal, failed_in_a_row = in_a_row,
                    "the producer is stuck; replaced it with a new one");
                *c = Current {
                    generation: generation + 1,
                    producer: p,
                    since: Instant::now(),
                };
                self.failures.store(0, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "the producer is stuck and a new one cannot be created"),
        }
    }

    /// The largest record the producer sends.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publish and wait for the broker's acknowledgement.
    pub async fn publish(&self, key: &str, value: &[u8], headers: OwnedHeaders) -> Result<Delivered, PublishError> {
        let (generation, producer) = self.current();
        let result = self.send(&producer, key, value, headers).await;
        self.after_delivery(generation, &producer, &result);
        result
    }

    async fn send(
        &self,
        producer: &FutureProducer,
        key: &str,
        value: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Delivered, PublishError> {
        let record = FutureRecord::to(&self.topic).key(key).payload(value).headers(headers);
        let delivery = match producer.send_result(record) {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(PublishError::QueueFull)
            }
            Err((e, _)) => return Err(classify(e)),
        };
        // librdkafka's own message.timeout.ms fires first; this outer bound only guards
        // against a delivery report that never comes.
        match tokio::time::timeout(self.ack_deadline + Duration::from_secs(1), delivery).await {
            Err(_) => Err(PublishError::Timeout(self.ack_deadline)),
            Ok(Err(_canceled)) => Err(PublishError::Broker(KafkaError::Canceled)),
            Ok(Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _)))) => {
                Err(PublishError::Timeout(self.ack_deadline))
            }
            Ok(Ok(Err((e, _)))) => Err(classify(e)),
            Ok(Ok(Ok(d))) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
        }
    }

    /// Records queued or in flight in the producer.
    pub fn queue_depth(&self) -> i32 {
        self.current().1.in_flight_count()
    }

    /// Whether the broker answers and knows the topic (for `/readyz`).
    pub async fn ready(&self) -> Result<(), NotReady> {
        let (_, producer) = self.current();
        if let Some((code, reason)) = producer.client().fatal_error() {
            return Err(NotReady::Fatal {
                code: format!("{code:?}"),
                reason,
            });
        }
        let failed = self.failures.load(Ordering::Relaxed);
        if failed >= STUCK_AFTER {
            return Err(NotReady::Failing { failed });
        }
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .map_err(NotReady::Unreachable)?;
            match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                _ => Err(NotReady::NoTopic { topic }),
            }
        })
        .await
        .map_err(NotReady::Check)?
    }

    /// Wait up to `timeout` for queued records to be delivered (on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().1.flush(timeout)
    }
}
