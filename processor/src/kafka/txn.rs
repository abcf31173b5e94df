//! One stage's transactional producer (exactly-once, KIP-447): every output, repartition
//! request, dead letter, control record and changelog entry a stage writes in a commit
//! interval goes through it, in one transaction with the consumed offsets.
//!
//! The producer is shared by the stage's [`super::emit::Emitter`] and
//! [`super::changelog::ChangelogWriter`] through a [`ProducerSlot`]; after a fatal error
//! (fenced by a newer incarnation, an epoch the coordinator no longer accepts) the
//! committer replaces the producer in the slot, and every later send uses the new one.
//!
//! Every call that talks to the transaction coordinator blocks: callers run them on a
//! blocking thread.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;

/// The producer every writer of a stage sends through; replaced after a fatal error.
#[derive(Clone)]
pub struct ProducerSlot(Arc<RwLock<FutureProducer>>);

impl std::fmt::Debug for ProducerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerSlot").finish_non_exhaustive()
    }
}

impl ProducerSlot {
    pub fn new(p: FutureProducer) -> Self {
        Self(Arc::new(RwLock::new(p)))
    }

    /// The current producer (a handle: cloning it is cheap).
    pub fn get(&self) -> FutureProducer {
        match self.0.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, p: FutureProducer) {
        match self.0.write() {
            Ok(mut slot) => *slot = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }
}

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The transaction must be aborted; the producer goes on.
    #[error("the transaction must be aborted")]
    Abortable(#[source] KafkaError),
    /// The consuming member has no group metadata (it is not in the group): the
    /// transaction's offsets cannot be sent, so it must be aborted.
    #[error("the consuming member is not in the group")]
    NotInGroup,
    /// The producer cannot go on (fenced, invalid epoch): it is replaced.
    #[error("the transactional producer failed for good")]
    Fatal(#[source] KafkaError),
    /// A coordinator call did not return within its bound (librdkafka's own timeout
    /// does not cover every path: `send_offsets_to_transaction` can wait forever for a
    /// group coordinator that went away, librdkafka #5456 and #5511). The call's thread
    /// is left to it and the producer is replaced.
    #[error("a transactional call did not return within {0:?}")]
    NoAnswer(Duration),
}

impl TxnError {
    /// Whether the producer must be replaced (rather than the transaction aborted).
    pub fn replaces_producer(&self) -> bool {
        matches!(self, TxnError::Fatal(_) | TxnError::NoAnswer(_))
    }

    fn of(e: KafkaError) -> Self {
        let fatal = match &e {
            KafkaError::Transaction(t) => t.is_fatal(),
            _ => false,
        };
        if fatal {
            TxnError::Fatal(e)
        } else {
            TxnError::Abortable(e)
        }
    }
}

/// A stage's transactional producer and how to make another.
#[allow(missing_debug_implementations)] // an rdkafka client
pub struct TxnProducer {
    slot: ProducerSlot,
    cfg: KafkaConfig,
    transactional_id: String,
    /// How long a coordinator call may take: the transaction timeout, since a commit
    /// that takes longer is aborted by the broker anyway.
    timeout: Duration,
}

impl TxnProducer {
    /// Create the producer, fence any earlier incarnation with the same
    /// `transactional_id` (its open transaction is aborted) and begin a transaction.
    /// Blocking.
    pub fn start(cfg: &KafkaConfig, transactional_id: String) -> Result<Self, KafkaError> {
        let timeout = cfg.transaction_timeout.max(Duration::from_secs(1));
        let producer = Self::create(cfg, &transactional_id, timeout)?;
        Ok(Self {
            slot: ProducerSlot::new(producer),
            cfg: cfg.clone(),
            transactional_id,
            timeout,
        })
    }

    fn create(cfg: &KafkaConfig, id: &str, timeout: Duration) -> Result<FutureProducer, KafkaError> {
        let producer: FutureProducer = super::client::transactional_producer(cfg, id).create()?;
        producer.init_transactions(timeout)?;
        producer.begin_transaction()?;
        Ok(producer)
    }

    pub fn slot(&self) -> ProducerSlot {
        self.slot.clone()
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// How long `calls` coordinator calls in a row may take before they count as
    /// hung: each is bounded by the transaction timeout, plus a margin for the
    /// blocking thread to be scheduled.
    pub fn bound(&self, calls: u32) -> Duration {
        self.timeout * calls + Duration::from_secs(5)
    }

    /// Commit the open transaction with `offsets` (topic, partition, next offset) as the
    /// group's, under `group` (the consuming member's *current* metadata: a member that
    /// was fenced out of the group fails here), then begin the next one. Blocking.
    pub fn commit(
        &self,
        offsets: &[(String, i32, i64)],
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        let p = self.slot.get();
        if !offsets.is_empty() {
            let Some(group) = group else {
                return Err(TxnError::NotInGroup);
            };
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, next) in offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .map_err(TxnError::Abortable)?;
            }
            p.send_offsets_to_transaction(&tpl, group, self.timeout)
                .map_err(TxnError::of)?;
        }
        p.commit_transaction(self.timeout).map_err(TxnError::of)?;
        p.begin_transaction().map_err(TxnError::of)
    }

    /// Abort the open transaction (every record sent in it is discarded for
    /// `read_committed` readers) and begin the next one. Blocking.
    pub fn abort(&self) -> Result<(), TxnError> {
        let p = self.slot.get();
        p.abort_transaction(self.timeout).map_err(TxnError::of)?;
        p.begin_transaction().map_err(TxnError::of)
    }

    /// Replace a producer that failed for good by a new one with the same id (which
    /// aborts whatever the old one left open, and fences it: a call of the old one
    /// still waiting somewhere fails). Blocking.
    pub fn recreate(&self) -> Result<(), TxnError> {
        let producer = Self::create(&self.cfg, &self.transactional_id, self.timeout).map_err(TxnError::Fatal)?;
        self.slot.replace(producer);
        Ok(())
    }
}

/// This instance's name in its transactional ids: `group_instance_id` when set (static
/// membership names each instance), else a name kept in the state directory, made once.
/// Either way a restart of the instance uses the same ids and fences its previous
/// incarnation; a wiped directory gets a new name (the old incarnation's transactions
/// are then fenced by the group's generation and time out).
pub fn instance_id(cfg: &KafkaConfig, state_dir: &std::path::Path) -> std::io::Result<String> {
    if !cfg.group_instance_id.is_empty() {
        return Ok(cfg.group_instance_id.clone());
    }
    let path = state_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("i{:x}", nanos ^ (u128::from(std::process::id()) << 64));
    std::fs::write(&path, &id)?;
    Ok(id)
}
