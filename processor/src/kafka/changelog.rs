//! Writing the stores' changelogs ([`crate::store::changelog`]): each entry to the
//! changelog partition of its input partition, acknowledged with `acks=all` before the
//! state it records is applied locally and the input offsets are committed; at least
//! once through an idempotent producer of its own, exactly once through the stage's
//! transactional producer ([`super::txn`]). This is the broker side of [`crate::partition::io::Changelog`].

use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::emit::classify;
use super::txn::ProducerSlot;
use crate::config::KafkaConfig;
use crate::partition::io::{Appended, Changelog, SendError};
use crate::store::Entry;

/// The largest changelog record: a payment's state with its held events
/// (`max_held_bytes`, 2 MiB by default, JSON-encoded) must fit, or its partition could
/// not go on. The changelog topics are created with the same `max.message.bytes`.
pub const MAX_ENTRY_BYTES: usize = 32 << 20;

/// The changelog producer.
#[derive(Clone)]
pub struct ChangelogWriter {
    producer: ProducerSlot,
}

impl std::fmt::Debug for ChangelogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogWriter").finish_non_exhaustive()
    }
}

impl ChangelogWriter {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut c = super::client::at_least_once_producer(cfg, "-changelog");
        // A state entry can be larger than librdkafka's 1 MB default (see MAX_ENTRY_BYTES).
        c.set("message.max.bytes", MAX_ENTRY_BYTES.to_string());
        let producer: FutureProducer = c.create()?;
        Ok(Self::with(ProducerSlot::new(producer)))
    }

    /// A writer sending through `producer` (a stage's transactional one).
    pub fn with(producer: ProducerSlot) -> Self {
        Self { producer }
    }
}

impl Changelog for ChangelogWriter {
    async fn append(
        &self,
        topic: &str,
        partition: i32,
        epoch: Option<u64>,
        entries: &[Entry],
    ) -> Result<Appended, SendError> {
        let producer = self.producer.get();
        let header = epoch.map(crate::store::changelog::epoch_header);
        let sends = entries.iter().map(|e| {
            let mut r = FutureRecord::<[u8], [u8]>::to(topic)
                .partition(partition)
                .key(e.key.as_slice());
            if let Some(v) = &e.value {
                r = r.payload(v.as_slice());
            }
            if let Some(h) = &header {
                r = r.headers(OwnedHeaders::new().insert(Header {
                    key: &h.name,
                    value: h.value.as_deref(),
                }));
            }
            producer.send(r, Duration::from_secs(0))
        });
        let (mut first, mut last) = (i64::MAX, -1);
        for r in join_all(sends).await {
            match r {
                Ok(d) => {
                    first = first.min(d.offset);
                    last = last.max(d.offset);
                }
                Err((e, _)) => return Err(classify(e)),
            }
        }
        Ok(Appended {
            first: first.min(last),
            last,
        })
    }
}
