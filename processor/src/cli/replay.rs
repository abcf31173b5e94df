//! `processor replay`: move the consumer group back so part of the raw log is processed
//! again, with the group stopped.
//!
//! What it does: writes a reset entry to each chosen partition of the payment stage's
//! changelog (voiding the state logged so far, see [`crate::store::changelog`]), then
//! sets the group's committed offset of every chosen partition to the replay point (the
//! start of the retained log, an explicit offset, or the first record at or after a
//! time). A processor instance assigned such a partition finds no state to restore (and
//! one that has local state notices the move: the group is now behind what the instance
//! committed itself, see [`crate::store::PartitionStore::record_commit`]), rebuilds the
//! state from the start of the log up to the replay point with outputs suppressed, then
//! decides every record from the replay point on again.
//!
//! **What downstream consumers see: the same ids again.** Records from the replay point
//! on are decided again and their outputs published again: every `activation_id`,
//! cancellation and `dead_letter_id` is a hash of the policy and the record that caused
//! it, so an unchanged decision reappears with the same id, which readers of
//! `policy.activations` de-duplicate (they must anyway: a crash between publishing and
//! committing re-publishes too). A decision that changed, because the replay runs fixed
//! code, appears with a new id. Re-publishing rather than silently rebuilding is the
//! point of a replay: it is how an operator repairs outputs that were wrong or lost.
//!
//! **Both stages.** Only the raw topic moves. The payment stage decides its records
//! again and sends its requests to the policy stage again (same request ids); the policy
//! stage finds each payment already decided and publishes again the event that request
//! got the first time (same id, same holder), so a replay re-publishes the policy events
//! as well, without the policy stage deciding anything anew.
//!
//! Offsets by time and the ends of the log come from the broker's offset index
//! ([`crate::kafka::offsets`]).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use std::sync::Arc;

use crate::config::{KafkaConfig, PAYMENTS_STORE};
use crate::kafka::changelog::ChangelogWriter;
use crate::kafka::{client, offsets};
use crate::partition::io::Changelog;
use crate::store::changelog::{replay_entry, reset_entry, ReplayMark};
use crate::store::Entry;

/// Broker requests made by the replay command wait this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the replay starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The start of every partition's retained log.
    Beginning,
    /// These partitions from these offsets; other partitions are left where they are.
    Offsets(Vec<(i32, i64)>),
    /// Every partition from its first record at or after this time (ms since the epoch).
    Time(i64),
}

impl ReplayFrom {
    /// Parse `PARTITION:OFFSET[,PARTITION:OFFSET...]`.
    pub fn parse_offsets(text: &str) -> Result<Self, ReplayError> {
        let bad = || ReplayError::BadOffsets(text.to_owned());
        let mut out = Vec::new();
        for part in text.split(',') {
            let (p, o) = part.trim().split_once(':').ok_or_else(bad)?;
            let p: i32 = p.trim().parse().map_err(|_| bad())?;
            let o: i64 = o.trim().parse().map_err(|_| bad())?;
            if p < 0 || o < 0 || out.iter().any(|(q, _)| *q == p) {
                return Err(bad());
            }
            out.push((p, o));
        }
        Ok(Self::Offsets(out))
    }

    /// Parse an RFC 3339 time such as `2026-11-22T08:00:00Z` or `2026-11-22T09:00:00+01:00`.
    pub fn parse_time(text: &str) -> Result<Self, ReplayError> {
        parse_rfc3339_ms(text).map(Self::Time)
    }
}

/// An RFC 3339 time as milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, ReplayError> {
    let t =
        time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339).map_err(|source| {
            ReplayError::BadTime {
                text: text.to_owned(),
                source,
            }
        })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Why a replay was refused or failed. Nothing is committed unless every partition's
/// target was found.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "consumer group {group} is {state} with {} active member(s): {}; stop every processor of the group first",
        members.len(), members.join(", ")
    )]
    GroupActive {
        group: String,
        state: String,
        members: Vec<String>,
    },
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("partition {partition} does not exist ({topic} has {partitions} partitions)")]
    UnknownPartition {
        topic: String,
        partition: i32,
        partitions: i32,
    },
    #[error("offset {offset} is outside partition {partition}'s retained log [{low}, {high}]")]
    OffsetOutOfRange {
        partition: i32,
        offset: i64,
        low: i64,
        high: i64,
    },
    #[error("invalid --from-offset {0:?}: expected PARTITION:OFFSET[,PARTITION:OFFSET...], each partition once")]
    BadOffsets(String),
    #[error("invalid time {text:?}: expected RFC 3339, e.g. 2026-11-22T08:00:00Z")]
    BadTime {
        text: String,
        #[source]
        source: time::error::Parse,
    },
    #[error("partition {partition}'s records could not be read back to find the time")]
    ProbeTimeout { partition: i32 },
    #[error(
        "replay would move partition(s) forward past their committed offset, so the records in between would be \
         recorded as decided without their outputs ever being sent: {}; choose an earlier point, or pass --force \
         to skip them on purpose",
        .0.iter().map(|(p, c, t)| format!("partition {p} committed {} -> {t}", c.map_or("nothing".to_owned(), |c| c.to_string()))).collect::<Vec<_>>().join(", ")
    )]
    Forward(Vec<(i32, Option<i64>, i64)>),
    #[error("Kafka")]
    Kafka(#[from] KafkaError),
    #[error("writing the replay's entry for partition {partition} to {topic}")]
    Changelog {
        topic: String,
        partition: i32,
        #[source]
        source: crate::partition::io::SendError,
    },
}

/// What the replay did to one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReset {
    /// The raw topic, or the policy stage's repartition topic.
    pub topic: String,
    pub partition: i32,
    /// First retained offset.
    pub log_start: i64,
    /// Offset the next record will get.
    pub log_end: i64,
    /// The group's committed offset before the replay (`None`: never committed).
    pub committed_before: Option<i64>,
    /// The group's committed offset now: processing restarts here.
    pub reset_to: i64,
}

/// Where each partition moves, refused while the group has members or when a
/// partition would move past its committed offset (or past the log start when it never
/// committed) unless `force`. Blocking.
fn plan(
    consumer: &BaseConsumer,
    cfg: &KafkaConfig,
    from: &ReplayFrom,
    force: bool,
) -> Result<Vec<PartitionReset>, ReplayError> {
    refuse_if_active(consumer, &cfg.group_id)?;
    let resets =
        topic_resets(consumer, &cfg.raw_topic, from)?.ok_or_else(|| ReplayError::NoTopic(cfg.raw_topic.clone()))?;
    let forward: Vec<(i32, Option<i64>, i64)> = resets
        .iter()
        .filter(|r| r.reset_to > r.committed_before.unwrap_or(r.log_start))
        .map(|r| (r.partition, r.committed_before, r.reset_to))
        .collect();
    if !forward.is_empty() && !force {
        return Err(ReplayError::Forward(forward));
    }
    Ok(resets)
}

/// Commit the replay points. Blocking.
fn commit(consumer: &BaseConsumer, cfg: &KafkaConfig, resets: &[PartitionReset]) -> Result<(), ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for r in resets {
        tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.reset_to))?;
    }
    // A member that joined since the check makes the broker reject this commit.
    refuse_if_active(consumer, &cfg.group_id)?;
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// What a partition's changelog must record for its move (`None`: nothing).
///
/// Back over what the state covers, with the whole log still there (it starts at 0): a
/// reset entry voids the state, which is then rebuilt from the log up to the new
/// offset — exactly the state below it. Back when the log no longer starts at 0: the
/// records below its start are gone and a rebuild would forget what they decided, so the
/// state is kept ([`ReplayMark`]: decided again in place). Forward, or not at all: the
/// state stays as it is (records skipped forward are folded into it, outputs
/// suppressed).
fn changelog_entry(r: &PartitionReset) -> Option<Entry> {
    let before = r.committed_before?;
    if r.reset_to >= before {
        return None;
    }
    Some(if r.log_start == 0 {
        reset_entry()
    } else {
        replay_entry(&ReplayMark {
            from: r.reset_to,
            until: before,
        })
    })
}

/// Record in the payment stage's changelog what each partition's move means for its
/// state ([`changelog_entry`]). Before the commit: an entry without the move costs at most
/// a rebuild, a move without the entry would restore the later state and skip the replay.
async fn void_changelog(
    cfg: &KafkaConfig,
    consumer: Arc<BaseConsumer>,
    resets: &[PartitionReset],
) -> Result<(), ReplayError> {
    let topic = cfg.changelog_topic(PAYMENTS_STORE);
    let probe = topic.clone();
    let exists = tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&probe), REQUEST_TIMEOUT))
        .await
        .map_err(|_| ReplayError::Kafka(KafkaError::Canceled))??
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        // Never written: nothing to void.
        return Ok(());
    }
    let writer = ChangelogWriter::new(cfg)?;
    for r in resets {
        let Some(entry) = changelog_entry(r) else { continue };
        writer
            .append(&topic, r.partition, None, &[entry])
            .await
            .map_err(|source| ReplayError::Changelog {
                topic: topic.clone(),
                partition: r.partition,
                source,
            })?;
    }
    Ok(())
}

/// Where each chosen partition of `topic` moves; `None` when the topic does not exist.
fn topic_resets(
    consumer: &BaseConsumer,
    topic: &str,
    from: &ReplayFrom,
) -> Result<Option<Vec<PartitionReset>>, ReplayError> {
    let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let Some(partitions) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
    else {
        return Ok(None);
    };
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(all, REQUEST_TIMEOUT)?;
    let chosen: Vec<(i32, Option<i64>)> = match from {
        ReplayFrom::Offsets(list) => {
            if let Some((p, _)) = list.iter().find(|(p, _)| *p >= partitions) {
                return Err(ReplayError::UnknownPartition {
                    topic: topic.to_owned(),
                    partition: *p,
                    partitions,
                });
            }
            list.iter().map(|(p, o)| (*p, Some(*o))).collect()
        }
        _ => (0..partitions).map(|p| (p, None)).collect(),
    };
    let mut resets = Vec::new();
    for (partition, offset) in chosen {
        let (low, high) = offsets::bounds(consumer, topic, partition)?;
        let reset_to = match (from, offset) {
            (ReplayFrom::Offsets(_), Some(o)) if (low..=high).contains(&o) => o,
            (ReplayFrom::Offsets(_), Some(o)) => {
                return Err(ReplayError::OffsetOutOfRange {
                    partition,
                    offset: o,
                    low,
                    high,
                })
            }
            (ReplayFrom::Time(t), _) => offsets::first_at_or_after(consumer, topic, partition, low, high, *t)?
                .ok_or(ReplayError::ProbeTimeout { partition })?,
            _ => low,
        };
        let committed_before = match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        resets.push(PartitionReset {
            topic: topic.to_owned(),
            partition,
            log_start: low,
            log_end: high,
            committed_before,
            reset_to,
        });
    }
    Ok(Some(resets))
}

/// Move the group to `from` on the raw topic (see the module docs).
pub async fn run(cfg: &KafkaConfig, from: &ReplayFrom, force: bool) -> Result<Vec<PartitionReset>, ReplayError> {
    // The group's own id, so the commit is the group's; this consumer never
    // subscribes, so it never joins the group.
    let consumer: Arc<BaseConsumer> = Arc::new(client::tool_consumer(cfg, &cfg.group_id, "-replay").create()?);
    let resets = {
        let (consumer, cfg, from) = (consumer.clone(), cfg.clone(), from.clone());
        tokio::task::spawn_blocking(move || plan(&consumer, &cfg, &from, force))
            .await
            .map_err(|_| ReplayError::Kafka(KafkaError::Canceled))??
    };
    void_changelog(cfg, consumer.clone(), &resets).await?;
    let (cfg, resets) = (cfg.clone(), resets);
    tokio::task::spawn_blocking(move || commit(&consumer, &cfg, &resets).map(|()| resets))
        .await
        .map_err(|_| ReplayError::Kafka(KafkaError::Canceled))?
}

fn refuse_if_active(consumer: &BaseConsumer, group: &str) -> Result<(), ReplayError> {
    let list = consumer.fetch_group_list(Some(group), REQUEST_TIMEOUT)?;
    for g in list.groups().iter().filter(|g| g.name() == group) {
        if !g.members().is_empty() {
            return Err(ReplayError::GroupActive {
                group: group.to_owned(),
                state: g.state().to_owned(),
                members: g
                    .members()
                    .iter()
                    .map(|m| format!("{} ({}{})", m.id(), m.client_id(), m.client_host()))
                    .collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_move_back_is_recorded_and_in_place_once_the_log_lost_its_start() {
        let reset = |log_start, committed_before, reset_to| PartitionReset {
            topic: "raw".into(),
            partition: 0,
            log_start,
            log_end: 100,
            committed_before,
            reset_to,
        };
        let key = |r: &PartitionReset| changelog_entry(r).map(|e| e.key);
        assert_eq!(
            key(&reset(0, Some(90), 0)),
            Some(crate::store::changelog::RESET.to_vec())
        );
        let e = changelog_entry(&reset(40, Some(90), 40)).expect("an entry");
        assert_eq!(e.key, crate::store::changelog::REPLAY.to_vec());
        let mark: ReplayMark = serde_json::from_slice(&e.value.unwrap()).unwrap();
        assert_eq!(mark, ReplayMark { from: 40, until: 90 });
        assert_eq!(key(&reset(40, Some(90), 90)), None, "a partition that does not move");
        assert_eq!(key(&reset(40, Some(90), 95)), None, "forward: the state stays");
        assert_eq!(key(&reset(0, None, 0)), None, "never committed: no state");
    }

    #[test]
    fn offsets_and_times_parse_or_say_what_is_expected() {
        assert_eq!(
            ReplayFrom::parse_offsets("0:10, 3:0").unwrap(),
            ReplayFrom::Offsets(vec![(0, 10), (3, 0)])
        );
        for bad in ["", "0", "0:x", "-1:3", "0:-3", "1:2,1:3"] {
            let e = ReplayFrom::parse_offsets(bad).unwrap_err();
            assert!(e.to_string().contains("PARTITION:OFFSET"), "{bad}: {e}");
        }
        assert_eq!(
            ReplayFrom::parse_time("2026-11-22T09:00:00.250+01:00").unwrap(),
            ReplayFrom::Time(1_795_334_400_250)
        );
        let e = ReplayFrom::parse_time("yesterday").unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }
}
