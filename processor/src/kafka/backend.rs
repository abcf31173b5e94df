//! The partition loop's ports on the broker ([`crate::partition::io`]): outputs through
//! the [`Emitter`], offsets through the group consumer, ranges of a partition through
//! a reader of its own.

use std::sync::Arc;
use std::time::Duration;

use hookstream_schemas::GapTimeout;
use rdkafka::consumer::{BaseConsumer, CommitMode as KafkaCommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::changelog::ChangelogWriter;
use super::emit::Emitter;
use crate::config::KafkaConfig;
use crate::partition::io::{
    Appended, BoxError, Changelog, CommitMode, GroupOffsets, Incoming, Log, LogReader, NeedsOperator, Outputs,
    Position, SendError,
};
use crate::partition::Stage;
use crate::rules::model::Output;
use crate::store::Entry;

/// How long an offset request waits for the broker before it is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A stage's writers: its outputs and its changelog (under exactly-once sharing the
/// stage's transactional producer).
#[derive(Debug, Clone)]
pub struct StageWriters {
    pub emitter: Emitter,
    pub changelog: ChangelogWriter,
}

/// The broker behind a worker.
#[allow(missing_debug_implementations)] // rdkafka clients
pub struct KafkaBackend<C: ConsumerContext + 'static> {
    cfg: KafkaConfig,
    requests_topic: String,
    policies_changelog: String,
    payments_writers: StageWriters,
    policies_writers: StageWriters,
    /// The group's members of this instance (raw topic, repartition topic): commits and
    /// committed offsets go through the member that owns the partition.
    payments: Arc<StreamConsumer<C>>,
    policies: Arc<StreamConsumer<C>>,
}

impl<C: ConsumerContext + 'static> KafkaBackend<C> {
    pub fn new(
        cfg: KafkaConfig,
        writers: [StageWriters; 2],
        payments: Arc<StreamConsumer<C>>,
        policies: Arc<StreamConsumer<C>>,
    ) -> Self {
        let requests_topic = cfg.requests_topic();
        let policies_changelog = cfg.changelog_topic(crate::config::POLICIES_STORE);
        let [payments_writers, policies_writers] = writers;
        Self {
            cfg,
            requests_topic,
            policies_changelog,
            payments_writers,
            policies_writers,
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

    fn writers(&self, stage: Stage) -> &StageWriters {
        match stage {
            Stage::Payments => &self.payments_writers,
            Stage::Policies => &self.policies_writers,
        }
    }
}

impl<C: ConsumerContext + 'static> Outputs for KafkaBackend<C> {
    async fn send_each(&self, stage: Stage, outputs: &[(&Output, Option<&str>)]) -> Vec<Result<(), SendError>> {
        self.writers(stage).emitter.send_each(stage, outputs).await
    }

    async fn send_gap_timeout(&self, partition: i32, g: &GapTimeout) -> Result<(), SendError> {
        // Gap timeouts are the payment stage's control records.
        self.payments_writers.emitter.send_gap_timeout(partition, g).await
    }
}

impl<C: ConsumerContext + 'static> Changelog for KafkaBackend<C> {
    async fn append(
        &self,
        topic: &str,
        partition: i32,
        epoch: Option<u64>,
        entries: &[Entry],
    ) -> Result<Appended, SendError> {
        let stage = if topic == self.policies_changelog {
            Stage::Policies
        } else {
            Stage::Payments
        };
        self.writers(stage)
            .changelog
            .append(topic, partition, epoch, entries)
            .await
    }
}

impl<C: ConsumerContext + 'static> GroupOffsets for KafkaBackend<C> {
    async fn position(&self, topic: &str, partition: i32) -> Result<Position, BoxError> {
        let (group, owned) = (self.member(topic).clone(), topic.to_owned());
        let committed = tokio::task::spawn_blocking(move || -> Result<Option<i64>, BoxError> {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&owned, partition);
            let committed = group.committed_offsets(tpl, REQUEST_TIMEOUT).map_err(port)?;
            let Some(e) = committed.find_partition(&owned, partition) else {
                return Ok(None);
            };
            // A partition's own error (its offset not stable yet: a transaction that
            // commits offsets is still completing) is no answer: the caller retries.
            e.error().map_err(port)?;
            Ok(match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        })
        .await??;
        Ok(match committed {
            Some(o) => Position::Committed(o),
            None => Position::LogStart(watermarks(&self.cfg, topic, partition).await?.0),
        })
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

/// A log reader's callbacks: the end of its partition is an event the reader asks
/// for (`enable.partition.eof`), not an error to log.
#[derive(Debug, Default)]
pub struct ReaderContext;

impl rdkafka::client::ClientContext for ReaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::error!(error = %error, reason, "log reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// One partition of an input topic or a changelog, read by a consumer of its own.
#[allow(missing_debug_implementations)] // an rdkafka client
pub struct KafkaReader(StreamConsumer<ReaderContext>);

impl LogReader for KafkaReader {
    async fn next(&mut self) -> Result<Option<Incoming>, BoxError> {
        match self.0.recv().await {
            Ok(m) => Ok(Some(super::record::incoming(&m))),
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => Ok(None),
            Err(e) => Err(port(e)),
        }
    }
}

impl<C: ConsumerContext + 'static> Log for KafkaBackend<C> {
    type Reader = KafkaReader;

    fn open(&self, topic: &str, partition: i32, from: Option<i64>) -> Result<KafkaReader, BoxError> {
        let reader: StreamConsumer<ReaderContext> =
            super::client::log_reader(&self.cfg).create_with_context(ReaderContext)?;
        let mut tpl = TopicPartitionList::new();
        let start = from.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(topic, partition, start)?;
        reader.assign(&tpl)?;
        Ok(KafkaReader(reader))
    }

    async fn log_start(&self, topic: &str, partition: i32) -> Result<i64, BoxError> {
        Ok(watermarks(&self.cfg, topic, partition).await?.0)
    }

    async fn log_end(&self, topic: &str, partition: i32) -> Result<i64, BoxError> {
        Ok(watermarks(&self.cfg, topic, partition).await?.1)
    }
}

/// A broker error as a port error: a missing grant needs an operator (the worker
/// retries it listed as stalled, `partition::retry::Failure`); anything else may pass
/// when tried again.
fn port(e: KafkaError) -> BoxError {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::GroupAuthorizationFailed | C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
            Box::new(NeedsOperator(Box::new(e)))
        }
        _ => Box::new(e),
    }
}

/// A partition's low and high watermarks, asked by a client of its own. Not the group
/// member's: after a partition leader moved, a member's query for a topic it does not
/// subscribe (a changelog) kept failing with UnknownPartition from librdkafka's stale
/// leader cache, a restore paused for good (`tests/tests/cluster.rs`, leader SIGKILL). A
/// fresh client looks the leader up anew; these queries come once per assignment.
async fn watermarks(cfg: &KafkaConfig, topic: &str, partition: i32) -> Result<(i64, i64), BoxError> {
    let (probe, topic) = (super::client::log_reader(cfg), topic.to_owned());
    tokio::task::spawn_blocking(move || -> Result<(i64, i64), BoxError> {
        let probe: BaseConsumer = probe.create()?;
        probe.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT).map_err(port)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode as C;

    use super::*;
    use crate::partition::retry::Failure;

    #[test]
    fn a_missing_grant_needs_an_operator_and_anything_else_may_pass_again() {
        for code in [C::GroupAuthorizationFailed, C::TopicAuthorizationFailed] {
            assert!(!port(KafkaError::MetadataFetch(code)).is_transient(), "{code:?}");
        }
        for code in [
            C::RequestTimedOut,
            C::UnknownTopicOrPartition,
            C::BrokerTransportFailure,
        ] {
            assert!(port(KafkaError::MetadataFetch(code)).is_transient(), "{code:?}");
        }
    }
}
