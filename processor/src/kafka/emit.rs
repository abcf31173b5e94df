//! Writing the processor's outputs: policy events, dead letters and control records,
//! each acknowledged with `acks=all` before the input offsets that caused them are
//! committed (DESIGN.md, principle 4): at least once through one idempotent producer,
//! exactly once through the stage's transactional one ([`super::txn`]), committed with
//! the offsets. This is the broker side of [`crate::partition::io::Outputs`].

use std::time::Duration;

use futures_util::future::join_all;
use hookstream_schemas::{encode, topics::headers, GapTimeout, GAP_TIMEOUT_CONTROL};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::txn::ProducerSlot;
use crate::config::KafkaConfig;
use crate::partition::io::{Outputs, SendError};
use crate::partition::Stage;
use crate::rules::model::Output;

/// Classify a producer error: permanent when the record itself is refused (too large,
/// invalid); anything else may pass on a retry — a missing grant too (topic or cluster
/// authorisation): it is the operator's to fix, so the partition pauses and retries,
/// loudly (`retries_total`, a warning per attempt), instead of replacing every output by
/// a dead letter.
pub fn classify(e: KafkaError) -> SendError {
    use rdkafka::types::RDKafkaErrorCode as C;
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidRequiredAcks
                | C::InvalidTopic
        )
    );
    if permanent {
        SendError::Refused(Box::new(e))
    } else {
        SendError::Unavailable(Box::new(e))
    }
}

/// The largest output (key and value), librdkafka's default `message.max.bytes` and
/// within the broker's default for a topic. Under exactly-once the stage's producer
/// also carries changelog entries of up to 32 MiB, so the outputs' own bound is kept
/// here: a larger output is refused for good and replaced by a smaller dead letter.
pub const MAX_OUTPUT_BYTES: usize = 1_000_000;

/// The size librdkafka checks against `message.max.bytes`: key, value and headers
/// with a record's largest framing (its `rd_kafka_msg_max_wire_size`).
fn wire_size(key: &str, value: &[u8], id: &str, traceparent: Option<&str>) -> usize {
    const FRAMING: usize = 36;
    const PER_HEADER: usize = 10;
    let mut headers = headers::EVENT_ID.len() + id.len() + PER_HEADER;
    if let Some(tp) = traceparent {
        headers += headers::TRACEPARENT.len() + tp.len() + PER_HEADER;
    }
    FRAMING + key.len() + value.len() + headers
}

/// The output producer.
#[derive(Clone)]
pub struct Emitter {
    producer: ProducerSlot,
    activations_topic: String,
    dlq_topic: String,
    raw_topic: String,
    requests_topic: String,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").finish_non_exhaustive()
    }
}

impl Emitter {
    /// An emitter with an idempotent producer of its own (at least once).
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer: FutureProducer = super::client::at_least_once_producer(cfg, "-emitter").create()?;
        Ok(Self::with(cfg, ProducerSlot::new(producer)))
    }

    /// An emitter sending through `producer` (a stage's transactional one).
    pub fn with(cfg: &KafkaConfig, producer: ProducerSlot) -> Self {
        Self {
            producer,
            activations_topic: cfg.activations_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            raw_topic: cfg.raw_topic.clone(),
            requests_topic: cfg.requests_topic(),
        }
    }

    /// Send every output and wait until all are acknowledged (or failed). `traceparent`
    /// is the trace context of the record that caused each output. One result per
    /// output, in order.
    async fn send_all(&self, outputs: &[(&Output, Option<&str>)]) -> Vec<Result<(), SendError>> {
        let mut results: Vec<Result<(), SendError>> = Vec::with_capacity(outputs.len());
        let mut encoded = Vec::with_capacity(outputs.len());
        for (i, (o, tp)) in outputs.iter().enumerate() {
            let e = match o {
                Output::Request(r) => {
                    encode(r).map(|v| (&self.requests_topic, r.policy_id.clone(), r.request_id.clone(), v))
                }
                Output::Policy(p) => {
                    encode(p).map(|v| (&self.activations_topic, p.policy_id.clone(), p.id().to_owned(), v))
                }
                Output::Dead(d) => {
                    let key = d
                        .payment_id
                        .clone()
                        .or_else(|| d.original_key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()))
                        .unwrap_or_default();
                    encode(d).map(|v| (&self.dlq_topic, key, d.dead_letter_id.clone(), v))
                }
            };
            match e {
                Ok((_, key, id, value)) if wire_size(&key, &value, &id, *tp) > MAX_OUTPUT_BYTES => {
                    results.push(Err(classify(KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
                    ))));
                }
                Ok((topic, key, id, value)) => {
                    results.push(Ok(()));
                    encoded.push((i, topic, key, id, value, *tp));
                }
                Err(e) => results.push(Err(SendError::Encode(e))),
            }
        }
        let producer = self.producer.get();
        let sends = encoded.iter().map(|(_, topic, key, id, value, tp)| {
            let mut h = OwnedHeaders::new().insert(Header {
                key: headers::EVENT_ID,
                value: Some(id),
            });
            if let Some(tp) = tp {
                h = h.insert(Header {
                    key: headers::TRACEPARENT,
                    value: Some(*tp),
                });
            }
            producer.send(
                FutureRecord::to(topic).key(key).payload(value).headers(h),
                Duration::from_secs(0),
            )
        });
        for ((i, ..), r) in encoded.iter().zip(join_all(sends).await) {
            if let Err((e, _)) = r {
                results[*i] = Err(classify(e));
            }
        }
        results
    }

    /// Write a GapTimeout control record into `partition` of the raw topic (the
    /// payment's own partition), marked with the control header.
    async fn send_control(&self, partition: i32, g: &GapTimeout) -> Result<(), SendError> {
        let value = encode(g).map_err(SendError::Encode)?;
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
            .get()
            .send(
                FutureRecord::to(&self.raw_topic)
                    .partition(partition)
                    .key(&g.payment_id)
                    .payload(&value)
                    .headers(h),
                Duration::from_secs(0),
            )
            .await
            .map_err(|(e, _)| classify(e))?;
        Ok(())
    }
}

impl Outputs for Emitter {
    async fn send_each(&self, _stage: Stage, outputs: &[(&Output, Option<&str>)]) -> Vec<Result<(), SendError>> {
        self.send_all(outputs).await
    }

    async fn send_gap_timeout(&self, partition: i32, g: &GapTimeout) -> Result<(), SendError> {
        self.send_control(partition, g).await
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode as C;

    use super::*;

    #[test]
    fn a_record_the_broker_refuses_is_permanent_and_an_unavailable_broker_or_a_missing_grant_transient() {
        for code in [C::MessageSizeTooLarge, C::InvalidRecord] {
            let e = classify(KafkaError::MessageProduction(code));
            assert!(matches!(e, SendError::Refused(_)), "{code:?}");
        }
        for code in [
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::BrokerTransportFailure,
            C::MessageTimedOut,
            // A missing grant is the operator's to fix, not the record's fault: the
            // partition waits, loudly, instead of dead-lettering every output.
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
        ] {
            let e = classify(KafkaError::MessageProduction(code));
            assert!(e.is_transient(), "{code:?}");
        }
    }
}
