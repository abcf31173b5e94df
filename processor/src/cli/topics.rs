//! `processor topics print|check|apply`: every topic the pipeline uses — the public
//! ones and the processor's internal ones — as code, with production settings
//! (`[topics]` in the config), checked against the broker.
//!
//! `check` reports, per topic, whether it exists with the planned partition count,
//! replication and settings; `apply` creates what is missing and reports the rest. A
//! topic that exists with other settings is drift: reported (and the command fails),
//! never changed silently — a partition count cannot be changed without moving keys
//! between partitions, and the internal topics must keep the raw topic's.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::config::{ProcessorConfig, PAYMENTS_STORE, POLICIES_STORE};
use crate::kafka::{client, topics};

/// How long one admin or metadata request waits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The command cannot do its work.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("Kafka admin request")]
    Kafka(#[from] KafkaError),
    #[error("creating {topic}: {code:?}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("describing {topic}: {code:?}")]
    Describe { topic: String, code: RDKafkaErrorCode },
    #[error("topics.{field}: {detail}")]
    Invalid { field: &'static str, detail: String },
}

/// One topic as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic settings, as the broker reports them.
    pub configs: BTreeMap<String, String>,
}

/// How a topic differs from its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    Partitions {
        expected: i32,
        found: i32,
    },
    ReplicationFactor {
        expected: i32,
        found: i32,
    },
    Config {
        key: String,
        expected: String,
        found: Option<String>,
    },
}

/// Where a topic stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exists as planned.
    Ok,
    /// Does not exist (`check`).
    Missing,
    /// Created now (`apply`).
    Created,
    /// Exists with other settings: see `drift`.
    Drift,
}

/// One topic's line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicReport {
    pub name: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Every topic of the pipeline with the settings `config` asks for.
pub fn plan(config: &ProcessorConfig) -> Result<Vec<TopicSpec>, TopicsError> {
    let t = &config.topics;
    if t.raw_retention < config.processing.dedup_window {
        return Err(TopicsError::Invalid {
            field: "raw_retention_secs",
            detail: "shorter than processing.dedup_window_secs: a provider's retry could outlive its record".into(),
        });
    }
    if t.min_insync_replicas > t.replication_factor || t.min_insync_replicas < 1 {
        return Err(TopicsError::Invalid {
            field: "min_insync_replicas",
            detail: format!("must be between 1 and replication_factor ({})", t.replication_factor),
        });
    }
    let k = &config.kafka;
    let spec = |name: String, partitions: i32, settings: Vec<(&str, String)>| {
        let mut configs: BTreeMap<String, String> = settings.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        configs.insert("min.insync.replicas".into(), t.min_insync_replicas.to_string());
        TopicSpec {
            name,
            partitions,
            replication_factor: t.replication_factor,
            configs,
        }
    };
    let delete = |retention: Duration| vec![("cleanup.policy", "delete".to_owned()), ("retention.ms", ms(retention))];
    let mut raw = delete(t.raw_retention);
    // The broker stamps each raw record with its time at append, whatever time the
    // producer claims: a partition's clock (`rules::clock`) then follows one clock, the
    // broker's, so a skewed ingest host (or anyone producing to the topic) cannot move
    // it ahead, one record at a time, until every dedup key expires; and that host's
    // records are still taken (a producer time too far ahead is refused under
    // CreateTime, by Kafka 4's `message.timestamp.after.max.ms`).
    raw.push(("message.timestamp.type", "LogAppendTime".to_owned()));
    Ok(vec![
        spec(k.raw_topic.clone(), t.raw_partitions, raw),
        spec(
            k.activations_topic.clone(),
            t.activations_partitions,
            delete(t.activations_retention),
        ),
        spec(k.dlq_topic.clone(), t.dlq_partitions, delete(t.dlq_retention)),
        spec(
            k.requests_topic(),
            t.raw_partitions,
            topics::requests_settings().to_vec(),
        ),
        spec(
            k.changelog_topic(PAYMENTS_STORE),
            t.raw_partitions,
            topics::changelog_settings().to_vec(),
        ),
        spec(
            k.changelog_topic(POLICIES_STORE),
            t.raw_partitions,
            topics::changelog_settings().to_vec(),
        ),
    ])
}

/// Compare every planned topic with the broker.
pub async fn check(config: &ProcessorConfig, plan: &[TopicSpec]) -> Result<Vec<TopicReport>, TopicsError> {
    let probe: BaseConsumer =
        client::tool_consumer(&config.kafka, &format!("{}-topics", config.kafka.group_id), "-topics").create()?;
    let md = tokio::task::block_in_place(|| probe.fetch_metadata(None, REQUEST_TIMEOUT))?;
    let found: BTreeMap<&str, (i32, i32)> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let replicas = t.partitions().first().map_or(0, |p| p.replicas().len() as i32);
            (t.name(), (t.partitions().len() as i32, replicas))
        })
        .collect();
    let admin: AdminClient<DefaultClientContext> = client::admin(&config.kafka).create()?;
    let mut out = Vec::with_capacity(plan.len());
    for spec in plan {
        let Some(&(partitions, replicas)) = found.get(spec.name.as_str()) else {
            out.push(TopicReport {
                name: spec.name.clone(),
                status: Status::Missing,
                drift: Vec::new(),
            });
            continue;
        };
        let mut drift = Vec::new();
        if partitions != spec.partitions {
            drift.push(Drift::Partitions {
                expected: spec.partitions,
                found: partitions,
            });
        }
        if replicas != spec.replication_factor {
            drift.push(Drift::ReplicationFactor {
                expected: spec.replication_factor,
                found: replicas,
            });
        }
        drift.extend(config_drift(&admin, spec).await?);
        let status = if drift.is_empty() { Status::Ok } else { Status::Drift };
        out.push(TopicReport {
            name: spec.name.clone(),
            status,
            drift,
        });
    }
    Ok(out)
}

/// The planned settings `spec`'s topic has otherwise (or not at all).
async fn config_drift(admin: &AdminClient<DefaultClientContext>, spec: &TopicSpec) -> Result<Vec<Drift>, TopicsError> {
    let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &options)
        .await?;
    let resource = described
        .into_iter()
        .next()
        .transpose()
        .map_err(|code| TopicsError::Describe {
            topic: spec.name.clone(),
            code,
        })?;
    let mut drift = Vec::new();
    for (key, expected) in &spec.configs {
        let found = resource.as_ref().and_then(|r| r.get(key)).and_then(|e| e.value.clone());
        if found.as_deref() != Some(expected.as_str()) {
            drift.push(Drift::Config {
                key: key.clone(),
                expected: expected.clone(),
                found,
            });
        }
    }
    Ok(drift)
}

/// Create every planned topic that is missing; report all of them.
pub async fn apply(config: &ProcessorConfig, plan: &[TopicSpec]) -> Result<Vec<TopicReport>, TopicsError> {
    let before = check(config, plan).await?;
    let missing: Vec<&TopicSpec> = plan
        .iter()
        .filter(|s| before.iter().any(|r| r.name == s.name && r.status == Status::Missing))
        .collect();
    if missing.is_empty() {
        return Ok(before);
    }
    let admin: AdminClient<DefaultClientContext> = client::admin(&config.kafka).create()?;
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|s| {
            s.configs.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication_factor)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    for r in admin.create_topics(new.iter(), &options).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
        }
    }
    // Metadata of a new topic can take a moment to reach every broker.
    let mut after = check(config, plan).await?;
    for _ in 0..50 {
        if after.iter().all(|r| r.status != Status::Missing) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = check(config, plan).await?;
    }
    for r in &mut after {
        if r.status == Status::Ok && missing.iter().any(|s| s.name == r.name) {
            r.status = Status::Created;
        }
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_topics_are_co_partitioned_with_the_raw_topic_and_changelogs_compacted() {
        let c = ProcessorConfig::default();
        let plan = plan(&c).unwrap();
        assert_eq!(plan.len(), 6);
        for s in &plan[3..] {
            assert_eq!(s.partitions, c.topics.raw_partitions, "{}", s.name);
        }
        for s in &plan[4..] {
            assert_eq!(s.configs["cleanup.policy"], "compact", "{}", s.name);
        }
        assert_eq!(plan[0].configs["message.timestamp.type"], "LogAppendTime");
        assert!(plan
            .iter()
            .all(|s| s.replication_factor == 3 && s.configs["min.insync.replicas"] == "2"));
    }

    #[test]
    fn a_raw_retention_shorter_than_the_dedup_window_is_refused() {
        let mut c = ProcessorConfig::default();
        c.topics.raw_retention = Duration::from_secs(3600);
        assert!(matches!(
            plan(&c),
            Err(TopicsError::Invalid {
                field: "raw_retention_secs",
                ..
            })
        ));
    }
}
