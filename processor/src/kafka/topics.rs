//! The processor's internal topic, created on start like Kafka Streams creates its
//! internal topics: the policy stage's repartition topic
//! (`<group_id>-policy-requests-repartition`, key = policy_id), with as many partitions
//! as the raw topic it is derived from. An existing one with another partition count is
//! refused: a policy would then be decided in two places.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;

/// How long one metadata or admin request waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The internal topic cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("Kafka admin request")]
    Kafka(#[from] KafkaError),
    #[error("creating {topic}: {code:?}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error(
        "{topic} has {found} partitions but the raw topic {raw} has {expected}: the policy stage needs one \
         partition per raw partition; delete it (the processor recreates it) or fix the raw topic"
    )]
    PartitionMismatch {
        topic: String,
        raw: String,
        expected: usize,
        found: usize,
    },
    #[error("stopped while waiting for the raw topic {0}")]
    Stopped(String),
}

/// Partitions of `topic`, `None` when it does not exist. Blocking.
fn partitions(probe: &BaseConsumer, topic: &str) -> Result<Option<usize>, KafkaError> {
    let md = probe.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0))
}

/// Create the repartition topic when missing, after the raw topic exists (waiting for
/// it until `stop`), and check its partition count when present.
pub async fn ensure_internal(cfg: &KafkaConfig, stop: &CancellationToken) -> Result<(), TopicError> {
    let probe: BaseConsumer =
        super::client::tool_consumer(cfg, &format!("{}-topics", cfg.group_id), "-topics").create()?;
    let requests = cfg.requests_topic();
    let expected = loop {
        let p = tokio::task::block_in_place(|| partitions(&probe, &cfg.raw_topic));
        match p {
            Ok(Some(n)) => break n,
            Ok(None) => tracing::warn!(topic = %cfg.raw_topic, "the raw topic does not exist yet; waiting"),
            Err(e) => tracing::warn!(error = %e, "cannot read topic metadata; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return Err(TopicError::Stopped(cfg.raw_topic.clone())),
        }
    };
    if let Some(found) = tokio::task::block_in_place(|| partitions(&probe, &requests))? {
        return check(&requests, &cfg.raw_topic, expected, found);
    }
    let admin: AdminClient<DefaultClientContext> = super::client::admin(cfg).create()?;
    let replication = TopicReplication::Fixed(cfg.internal_replication_factor);
    // Kept until the changelog-backed state lets the policy stage start from a snapshot:
    // its state is a fold of this whole topic.
    let topic = NewTopic::new(&requests, expected as i32, replication).set("retention.ms", "-1");
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    for r in admin.create_topics([&topic], &options).await? {
        match r {
            Ok(_) => {
                tracing::info!(topic = %requests, partitions = expected, "created the policy stage's repartition topic")
            }
            // Another instance created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    for _ in 0..50 {
        if let Some(found) = tokio::task::block_in_place(|| partitions(&probe, &requests))? {
            return check(&requests, &cfg.raw_topic, expected, found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(TopicError::Create {
        topic: requests,
        code: RDKafkaErrorCode::UnknownTopicOrPartition,
    })
}

fn check(topic: &str, raw: &str, expected: usize, found: usize) -> Result<(), TopicError> {
    if found == expected {
        return Ok(());
    }
    Err(TopicError::PartitionMismatch {
        topic: topic.to_owned(),
        raw: raw.to_owned(),
        expected,
        found,
    })
}
