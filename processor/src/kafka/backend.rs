//! The partition loop's ports on the broker ([`crate::partition::io`]): outputs through
//! the [`Emitter`], offsets through the group consumer, ranges of a partition through
//! a reader of its own.

use std::sync::Arc;
use std::time::Duration;

use hookstream_schemas::GapTimeout;
use rdkafka::consumer::{CommitMode as KafkaCommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::changelog::ChangelogWriter;
use super::emit::Emitter;
use crate::config::KafkaConfig;
use crate::partition::io::{
    BoxError, Changelog, CommitMode, GroupOffsets, Incoming, Log, LogReader, Outputs, Position, SendError,
};
use crate::rules::model::Output;
use crate::store::Entry;

/// How long an offset request waits for the broker before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker behind a worker.
#[allow(missing_debug_implementations)] // rdkafka clients
pub struct KafkaBackend<C: ConsumerContext + 'static> {
    cfg: KafkaConfig,
    requests_topic: String,
    emitter: Emitter,
    changelog: ChangelogWriter,
    /// The group's members of this instance (raw topic, repartition topic): commits and
    /// committed offsets go through the member that owns the partition.
    payments: Arc<StreamConsumer<C>>,
    policies: Arc<StreamConsumer<C>>,
}

impl<C: ConsumerContext + 'static> KafkaBackend<C> {
    pub fn new(
        cfg: KafkaConfig,
        emitter: Emitter,
        changelog: ChangelogWriter,
        payments: Arc<StreamConsumer<C>>,
        policies: Arc<StreamConsumer<C>>,
    ) -> Self {
        let requests_topic = cfg.requests_topic();
        Self {
            cfg,
            requests_topic,
            emitter,
            changelog,
            payments,
            policies,
        }
    }

    fn member(&self, topic: &str) -> &Arc<StreamConsumer<C>> {
        if topic == self.requests_topic {
            &self.policies
        } else {
            &self.payments
        }
    }
}

impl<C: ConsumerContext + 'static> Outputs for KafkaBackend<C> {
    async fn send_each(&self, outputs: &[(&Output, Option<&str>)]) -> Vec<Result<(), SendError>> {
        self.emitter.send_each(outputs).await
    }

    async fn send_gap_timeout(&self, partition: i32, g: &GapTimeout) -> Result<(), SendError> {
        self.emitter.send_gap_timeout(partition, g).await
    }
}

impl<C: ConsumerContext + 'static> Changelog for KafkaBackend<C> {
    async fn append(&self, topic: &str, partition: i32, entries: &[Entry]) -> Result<i64, SendError> {
        self.changelog.append(topic, partition, entries).await
    }
}

impl<C: ConsumerContext + 'static> GroupOffsets for KafkaBackend<C> {
    async fn position(&self, topic: &str, partition: i32) -> Result<Position, BoxError> {
        let (group, topic) = (self.member(topic).clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || -> Result<Position, BoxError> {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            let committed = group.committed_offsets(tpl, REQUEST_TIMEOUT)?;
            Ok(match committed.find_partition(&topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Position::Committed(o),
                _ => Position::LogStart(group.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)?.0),
            })
        })
        .await?
    }

    fn commit(&self, topic: &str, partition: i32, next: i64, mode: CommitMode) -> Result<(), BoxError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
        let mode = match mode {
            CommitMode::Async => KafkaCommitMode::Async,
            CommitMode::Sync => KafkaCommitMode::Sync,
        };
        Ok(self.member(topic).commit(&tpl, mode)?)
    }
}

/// One partition of the raw topic, read by a consumer of its own.
#[allow(missing_debug_implementations)] // an rdkafka client
pub struct KafkaReader(StreamConsumer);

impl LogReader for KafkaReader {
    async fn next(&mut self) -> Result<Incoming, BoxError> {
        let m = self.0.recv().await?;
        Ok(super::record::incoming(&m))
    }
}

impl<C: ConsumerContext + 'static> Log for KafkaBackend<C> {
    type Reader = KafkaReader;

    fn open(&self, topic: &str, partition: i32, from: Option<i64>) -> Result<KafkaReader, BoxError> {
        let reader: StreamConsumer = super::client::log_reader(&self.cfg).create()?;
        let mut tpl = TopicPartitionList::new();
        let start = from.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(topic, partition, start)?;
        reader.assign(&tpl)?;
        Ok(KafkaReader(reader))
    }

    async fn log_start(&self, topic: &str, partition: i32) -> Result<i64, BoxError> {
        let (member, topic) = (self.member(topic).clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || -> Result<i64, BoxError> {
            Ok(member.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)?.0)
        })
        .await?
    }

    async fn log_end(&self, topic: &str, partition: i32) -> Result<i64, BoxError> {
        let (member, topic) = (self.member(topic).clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || -> Result<i64, BoxError> {
            Ok(member.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)?.1)
        })
        .await?
    }
}
