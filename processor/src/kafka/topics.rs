//! The processor's internal topics, created on start like Kafka Streams creates its
//! internal topics, each with as many partitions as the raw topic it is derived from:
//! - the policy stage's repartition topic (`<group_id>.policy-requests`,
//!   key = policy_id);
//! - the two stores' changelogs (`<group_id>.payments-changelog`,
//!   `<group_id>.policies-changelog`, compacted; partition n holds the state of input
//!   partition n, see [`crate::store::changelog`]).
//!
//! An existing one with another partition count is refused: a policy would then be
//! decided in two places, or a state restored into the wrong partition.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, PAYMENTS_STORE, POLICIES_STORE};

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
        "{topic} has {found} partitions but the raw topic {raw} has {expected}: each internal topic needs one \
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

/// The settings the repartition topic is created with.
pub fn requests_settings() -> [(&'static str, String); 1] {
    // Unlimited: a raw replay re-sends requests, and the requests of a policy whose
    // changelog entry is lost can be folded again.
    [("retention.ms", "-1".to_owned())]
}

/// The settings every changelog topic is created with.
pub fn changelog_settings() -> [(&'static str, String); 3] {
    [
        // Only the latest value of each store key is needed to restore a store.
        ("cleanup.policy", "compact".to_owned()),
        // A batch whose writer stopped before its closing meta entry is ignored by a
        // restore, but its entries supersede older values of the same keys; they are
        // written again (the same values) when its records are decided again, well
        // within an hour, so the older values must survive compaction that long. The
        // same holds, at least once, for a previous owner's entries after a newer claim
        // (`partition::epoch`): the owner writes those keys again at its next append.
        ("min.compaction.lag.ms", "3600000".to_owned()),
        // A payment's state with its held events can exceed the 1 MB default.
        ("max.message.bytes", super::changelog::MAX_ENTRY_BYTES.to_string()),
    ]
}

/// Create the internal topics when missing, after the raw topic exists (waiting for it
/// until `stop`), and check their partition counts when present.
pub async fn ensure_internal(cfg: &KafkaConfig, stop: &CancellationToken) -> Result<(), TopicError> {
    let probe: BaseConsumer =
        super::client::tool_consumer(cfg, &format!("{}-topics", cfg.group_id), "-topics").create()?;
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
    let admin: AdminClient<DefaultClientContext> = super::client::admin(cfg).create()?;
    let requests = (cfg.requests_topic(), requests_settings().to_vec());
    let payments = (cfg.changelog_topic(PAYMENTS_STORE), changelog_settings().to_vec());
    let policies = (cfg.changelog_topic(POLICIES_STORE), changelog_settings().to_vec());
    for (name, settings) in [requests, payments, policies] {
        ensure_one(cfg, &probe, &admin, &name, &settings, expected).await?;
    }
    Ok(())
}

/// Create `name` with `settings` when missing, then check its partition count.
async fn ensure_one(
    cfg: &KafkaConfig,
    probe: &BaseConsumer,
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    settings: &[(&str, String)],
    expected: usize,
) -> Result<(), TopicError> {
    if let Some(found) = tokio::task::block_in_place(|| partitions(probe, name))? {
        return check(name, &cfg.raw_topic, expected, found);
    }
    let replication = TopicReplication::Fixed(cfg.internal_replication_factor);
    let mut topic = NewTopic::new(name, expected as i32, replication);
    // acks=all writes need min.insync.replicas in-sync copies: never more than the topic
    // has (a cluster whose default is 2 would refuse every write to a one-replica topic),
    // and 2 for three or more replicas, as in production. With the broker's default
    // replication (-1) its default min.insync.replicas applies.
    let min_isr = cfg.internal_replication_factor.min(2).to_string();
    if cfg.internal_replication_factor > 0 {
        topic = topic.set("min.insync.replicas", &min_isr);
    }
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    for r in admin.create_topics([&topic], &options).await? {
        match r {
            Ok(_) => tracing::info!(topic = %name, partitions = expected, "created an internal topic"),
            // Another instance created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, code }),
        }
    }
    for _ in 0..50 {
        if let Some(found) = tokio::task::block_in_place(|| partitions(probe, name))? {
            return check(name, &cfg.raw_topic, expected, found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(TopicError::Create {
        topic: name.to_owned(),
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
