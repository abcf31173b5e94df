//! Writing the processor's outputs: policy events, dead letters and control records,
//! through one idempotent producer, each acknowledged with `acks=all` before the input
//! offsets that caused them are committed (DESIGN.md, principle 4).

use std::time::Duration;

use futures_util::future::join_all;
use hookstream_schemas::{encode, topics::headers, GapTimeout, GAP_TIMEOUT_CONTROL};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::model::Output;

/// An output was not acknowledged. Always transient: the batch is retried with the
/// same records (same deterministic ids), never skipped.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("output does not encode")]
    Encode(#[from] hookstream_schemas::CodecError),
    #[error("broker did not acknowledge an output")]
    Kafka(#[source] KafkaError),
}

/// The output producer.
#[derive(Clone)]
pub struct Emitter {
    producer: FutureProducer,
    activations_topic: String,
    dlq_topic: String,
    raw_topic: String,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").finish_non_exhaustive()
    }
}

impl Emitter {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("client.id", format!("{}-emitter", cfg.client_id))
            // Outputs must be durable before input offsets are committed.
            .set("acks", "all")
            // Retries inside librdkafka never duplicate or reorder an output.
            .set("enable.idempotence", "true")
            // Java-compatible partitioning for policy_id / payment_id keys (DESIGN.md, "Topics").
            .set("partitioner", "murmur2_random")
            // Batch the outputs of a record batch together; costs at most 2 ms.
            .set("linger.ms", "2")
            .create()?;
        Ok(Self {
            producer,
            activations_topic: cfg.activations_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            raw_topic: cfg.raw_topic.clone(),
        })
    }

    /// Send every output and wait until all are acknowledged. `traceparent` is the trace
    /// context of the record that caused each output.
    pub async fn send_all(&self, outputs: &[(Output, Option<String>)]) -> Result<(), EmitError> {
        let mut encoded = Vec::with_capacity(outputs.len());
        for (o, tp) in outputs {
            let (topic, key, id, value) = match o {
                Output::Policy(p) => (
                    &self.activations_topic,
                    p.policy_id.clone(),
                    p.id().to_owned(),
                    encode(p)?,
                ),
                Output::Dead(d) => {
                    let key = d
                        .payment_id
                        .clone()
                        .or_else(|| d.original_key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()))
                        .unwrap_or_default();
                    (&self.dlq_topic, key, d.dead_letter_id.clone(), encode(d)?)
                }
            };
            encoded.push((topic, key, id, value, tp));
        }
        let sends = encoded.iter().map(|(topic, key, id, value, tp)| {
            let mut h = OwnedHeaders::new().insert(Header {
                key: headers::EVENT_ID,
                value: Some(id),
            });
            if let Some(tp) = tp {
                h = h.insert(Header {
                    key: headers::TRACEPARENT,
                    value: Some(tp),
                });
            }
            self.producer.send(
                FutureRecord::to(topic).key(key).payload(value).headers(h),
                Duration::from_secs(0),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| EmitError::Kafka(e))?;
        }
        Ok(())
    }

    /// Write a GapTimeout control record into `partition` of the raw topic (the
    /// payment's own partition), marked with the control header.
    pub async fn send_gap_timeout(&self, partition: i32, g: &GapTimeout) -> Result<(), EmitError> {
        let value = encode(g)?;
        let h = OwnedHeaders::new()
            .insert(Header {
                key: headers::CONTROL,
                value: Some(GAP_TIMEOUT_CONTROL),
            })
            .insert(Header {
                key: headers::SOURCE,
                value: Some("hookstream-processor"),
            });
        self.producer
            .send(
                FutureRecord::to(&self.raw_topic)
                    .partition(partition)
                    .key(&g.payment_id)
                    .payload(&value)
                    .headers(h),
                Duration::from_secs(0),
            )
            .await
            .map_err(|(e, _)| EmitError::Kafka(e))?;
        Ok(())
    }
}
