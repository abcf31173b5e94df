//! The sled projection of the processor's input topics.
//!
//! One tree per input partition (`raw/<topic>/<partition>`: a partition of the raw topic
//! for the payment stage, of the repartition topic for the policy stage) holds
//! everything that partition's fold needs, so a batch of records changes it in one
//! atomic `apply_batch`, applied offset included:
//!
//! | key | value |
//! |---|---|
//! | `p` + payment_id `\0` source | `PaymentState` (JSON; payment stage) |
//! | `d` + source `\0` event_id | `DedupEntry` (JSON; payment stage) |
//! | `x` + first-seen ms (8 bytes, big-endian) + dedup key | empty: the expiry index, in time order |
//! | `g` + payment key | empty: payments with held events (the gap timer's index) |
//! | `P` + policy_id | `PolicyState` (JSON; policy stage) |
//! | `m:applied` | offset of the last applied record (8 bytes, big-endian) |
//! | `m:max_ts` | the partition's clock after the last applied record (ms, `crate::rules::clock`): dedup expiry is decided against it, so it replays identically |
//! | `m:hole_ack` | a log start an operator acknowledged: the records between the applied offset and it are gone (the partition loop's hole check) |
//! | `m:committed` | highest offset this instance handed the partition over at (synchronous commit on revocation or shutdown) |
//! | `m:changelog` | the changelog offset after the last entry the state reflects ([`changelog`]) |
//! | `e`…, `E`… | when each payment and policy state expires ([`evict`]) |
//!
//! sled is a cache of the changelog ([`changelog`]): every change is logged before it is
//! applied here, so a lost, wiped or corrupt directory is restored from the changelog,
//! and one that fails to open is moved aside.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::rules::model::{DedupEntry, PaymentState};
use crate::rules::policy::PolicyState;

pub mod changelog;
mod evict;
mod flusher;

pub use changelog::Entry;
pub use flusher::{FlushError, Flusher};

/// sled failed or holds something unreadable. Disk errors are transient for the caller:
/// it pauses the partition and retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled")]
    Sled(#[from] sled::Error),
    #[error("sled value under {key:?} is not valid")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

const APPLIED: &[u8] = b"m:applied";
const MAX_TS: &[u8] = b"m:max_ts";
const COMMITTED: &[u8] = b"m:committed";
const HOLE_ACK: &[u8] = b"m:hole_ack";
/// Present when the applied record is followed by a transaction marker.
const MARKER: &[u8] = b"m:marker";
/// Present while the partition holds writes of a transaction not yet committed.
const UNCOMMITTED: &[u8] = b"m:uncommitted";

fn key(prefix: u8, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest.as_bytes());
    k
}

fn expiry_key(first_seen_ms: i64, dedup_key: &str) -> Vec<u8> {
    let mut k = vec![b'x'];
    k.extend_from_slice(&(first_seen_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(dedup_key.as_bytes());
    k
}

fn read_json<T: DeserializeOwned>(k: &[u8], v: Option<sled::IVec>) -> Result<Option<T>, StoreError> {
    v.map(|v| serde_json::from_slice(&v))
        .transpose()
        .map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            source,
        })
}

fn read_i64(v: Option<sled::IVec>) -> Option<i64> {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(i64::from_be_bytes)
}

/// The whole state directory.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Open (or create) the store in `dir`. When sled cannot open it, the directory is
    /// moved aside (`<dir>.broken-<unix secs>`) and a fresh one is created: every
    /// partition then rebuilds from the log.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let open = || sled::Config::new().path(dir).cache_capacity(cache_bytes).open();
        let db = match open() {
            Ok(db) => db,
            Err(e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = PathBuf::from(format!("{}.broken-{secs}", dir.display()));
                tracing::error!(error = %e, dir = %dir.display(), aside = %aside.display(),
                    "sled state does not open; moving it aside and rebuilding from the log");
                std::fs::rename(dir, &aside).map_err(|io| StoreError::Sled(sled::Error::Io(io)))?;
                open()?
            }
        };
        // The policy registry of earlier versions (replaced by the policy stage).
        let _ = db.drop_tree("policies");
        Ok(Self { db })
    }

    /// The state of one input partition.
    pub fn partition(&self, topic: &str, partition: i32) -> Result<PartitionStore, StoreError> {
        let tree = self.db.open_tree(format!("raw/{topic}/{partition}"))?;
        Ok(PartitionStore { tree })
    }

    /// A store that lives in memory only and is gone when dropped: sled itself, for
    /// tests of the partition loop.
    #[cfg(test)]
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Self { db })
    }

    /// Every source's payment of this id, in any partition of `topic`.
    pub fn find_payments(&self, topic: &str, payment_id: &str) -> Result<Vec<(i32, PaymentState)>, StoreError> {
        let mut out = Vec::new();
        let mut prefix = key(b'p', payment_id);
        prefix.push(0);
        for (partition, tree) in self.trees(topic)? {
            for item in tree.scan_prefix(&prefix) {
                let (k, v) = item?;
                if let Some(st) = read_json::<PaymentState>(&k, Some(v))? {
                    out.push((partition, st));
                }
            }
        }
        Ok(out)
    }

    /// A policy's state, in whichever partition of the repartition `topic` holds it.
    pub fn find_policy(&self, topic: &str, policy_id: &str) -> Result<Option<(i32, PolicyState)>, StoreError> {
        let k = key(b'P', policy_id);
        for (partition, tree) in self.trees(topic)? {
            if let Some(st) = read_json::<PolicyState>(&k, tree.get(&k)?)? {
                return Ok(Some((partition, st)));
            }
        }
        Ok(None)
    }

    /// The trees of `topic`'s partitions that exist here.
    fn trees(&self, topic: &str) -> Result<Vec<(i32, sled::Tree)>, StoreError> {
        let prefix = format!("raw/{topic}/");
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let Some(p) = std::str::from_utf8(&name).ok().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let Ok(partition) = p.parse::<i32>() else { continue };
            out.push((partition, self.db.open_tree(&name)?));
        }
        Ok(out)
    }

    /// Make everything written so far durable. Blocking; see [`PartitionStore::persist`].
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Changes of one batch of records, applied atomically.
#[derive(Debug, Default)]
pub struct Changes {
    /// By payment key ([`crate::rules::model::payment_key`]).
    pub payments: HashMap<String, PaymentState>,
    /// By policy id.
    pub policies: HashMap<String, PolicyState>,
    pub dedup: HashMap<String, DedupEntry>,
    /// Offset of the last record of the batch.
    pub applied: Option<i64>,
    /// Newest record time in the batch (ms).
    pub max_ts: Option<i64>,
    /// Expiry-index keys (`x`…) of dedup entries past the window at the partition's
    /// clock: deleted with the batch, logged as tombstones.
    pub expired: Vec<Vec<u8>>,
    /// Store keys (`p`…, `P`…) of payment and policy states past their time at the
    /// partition's clock: deleted with the batch, logged as tombstones.
    pub evicted: Vec<Vec<u8>>,
    /// Expiry-index keys of dedup entries the batch writes again (seen anew after their
    /// window): only the old index entry goes, not the entry, and nothing is logged.
    pub replaced_expiry: Vec<Vec<u8>>,
    /// The last applied record was written in a transaction: the offset after it holds
    /// the transaction's commit marker, which no consumer is handed (so a log that
    /// starts right after the marker has no hole).
    pub marker_follows: bool,
}

impl Changes {
    /// Set the dedup keys past their window ([`PartitionStore::expired_dedup`]): those
    /// the batch writes again keep their new entry, only their old index entry goes.
    pub fn set_expired(&mut self, expiry_keys: Vec<Vec<u8>>) {
        let (replaced, expired) = expiry_keys
            .into_iter()
            .partition(|x| self.dedup.contains_key(String::from_utf8_lossy(&x[9..]).as_ref()));
        self.expired = expired;
        self.replaced_expiry = replaced;
    }
}

/// One raw partition's tree.
#[derive(Debug, Clone)]
pub struct PartitionStore {
    tree: sled::Tree,
}

impl PartitionStore {
    /// Offset of the last applied record, `None` when nothing was applied yet.
    pub fn applied_offset(&self) -> Result<Option<i64>, StoreError> {
        Ok(read_i64(self.tree.get(APPLIED)?))
    }

    /// Newest record time applied (ms).
    pub fn max_ts(&self) -> Result<Option<i64>, StoreError> {
        Ok(read_i64(self.tree.get(MAX_TS)?))
    }

    /// The store key of a payment (`p`…) and of a policy (`P`…).
    pub fn payment_key(payment_key: &str) -> Vec<u8> {
        key(b'p', payment_key)
    }

    pub fn policy_key(policy_id: &str) -> Vec<u8> {
        key(b'P', policy_id)
    }

    /// The payment under `payment_key` ([`crate::rules::model::payment_key`]).
    pub fn payment(&self, payment_key: &str) -> Result<Option<PaymentState>, StoreError> {
        let k = key(b'p', payment_key);
        read_json(&k, self.tree.get(&k)?)
    }

    pub fn policy(&self, policy_id: &str) -> Result<Option<PolicyState>, StoreError> {
        let k = key(b'P', policy_id);
        read_json(&k, self.tree.get(&k)?)
    }

    pub fn dedup(&self, dedup_key: &str) -> Result<Option<DedupEntry>, StoreError> {
        let k = key(b'd', dedup_key);
        read_json(&k, self.tree.get(&k)?)
    }

    /// Payments that hold events (waiting for a sequence gap to fill).
    pub fn payments_with_gaps(&self) -> Result<Vec<PaymentState>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"g") {
            let (k, _) = item?;
            let payment_key = String::from_utf8_lossy(&k[1..]).into_owned();
            if let Some(st) = self.payment(&payment_key)? {
                out.push(st);
            }
        }
        Ok(out)
    }

    /// Apply a batch atomically: its values as serialized once for the changelog
    /// (`entries`, [`Changes::entries`]), the indexes derived from `changes`, expired
    /// and evicted keys removed, the changelog position (`changelog_next`: the offset
    /// after the batch's meta entry) recorded. Not yet durable: the caller waits for the
    /// [`Flusher`] before it commits offsets.
    ///
    /// Blocking (sled does disk I/O and may wait for its own flusher): call it from
    /// `spawn_blocking`.
    pub fn persist(&self, changes: &Changes, entries: &[Entry], changelog_next: Option<i64>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        if let Some(next) = changelog_next {
            Self::changelog_mark(&mut batch, next);
        }
        for k in &changes.evicted {
            self.evict(&mut batch, k)?;
        }
        for (id, st) in &changes.payments {
            self.reindex(&mut batch, &key(b'p', id), st.evict_at_ms)?;
            if st.held.is_empty() {
                batch.remove(key(b'g', id));
            } else {
                batch.insert(key(b'g', id), &[][..]);
            }
        }
        for (id, st) in &changes.policies {
            self.reindex(&mut batch, &key(b'P', id), st.evict_at_ms)?;
        }
        for (k, e) in &changes.dedup {
            batch.insert(expiry_key(e.first_seen_ms, k), &[][..]);
        }
        // The states and dedup entries; their deletions are the expiries and
        // evictions here.
        for e in entries {
            if let Some(v) = &e.value {
                batch.insert(e.key.as_slice(), v.as_slice());
            }
        }
        for x in &changes.expired {
            let mut d = vec![b'd'];
            d.extend_from_slice(&x[9..]);
            batch.remove(d);
            batch.remove(x.as_slice());
        }
        for x in &changes.replaced_expiry {
            batch.remove(x.as_slice());
        }
        if let Some(off) = changes.applied {
            batch.insert(APPLIED, &off.to_be_bytes()[..]);
            if changes.marker_follows {
                batch.insert(MARKER, &[][..]);
            } else {
                batch.remove(MARKER);
            }
        }
        if let Some(ts) = changes.max_ts {
            batch.insert(MAX_TS, &ts.to_be_bytes()[..]);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The highest offset this instance has committed for the partition (see
    /// [`PartitionStore::record_commit`]), `None` when it never committed one.
    pub fn committed_mark(&self) -> Result<Option<i64>, StoreError> {
        Ok(read_i64(self.tree.get(COMMITTED)?))
    }

    /// Remember that the group acknowledged a commit of `offset` from this instance.
    ///
    /// The group's committed offset never goes below what any member committed, except
    /// when `processor replay` moves it back. A committed offset found below this mark
    /// on assignment is therefore a replay: the worker drops the partition's state and
    /// rebuilds it up to the new offset. Not flushed on its own: sled's periodic flush
    /// and the next batch's group commit make it durable.
    pub fn record_commit(&self, offset: i64) -> Result<(), StoreError> {
        self.tree.fetch_and_update(COMMITTED, |old| {
            let old = old.and_then(|v| <[u8; 8]>::try_from(v).ok()).map(i64::from_be_bytes);
            Some(old.map_or(offset, |o| o.max(offset)).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    /// Every key and value, in key order (tests compare whole states).
    #[cfg(test)]
    pub fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    /// The log start an operator acknowledged a hole up to (records below it are gone).
    pub fn hole_acknowledged(&self) -> Result<Option<i64>, StoreError> {
        Ok(read_i64(self.tree.get(HOLE_ACK)?))
    }

    /// Remember that records below `log_start` are gone and may be skipped.
    pub fn record_hole_ack(&self, log_start: i64) -> Result<(), StoreError> {
        self.tree.insert(HOLE_ACK, &log_start.to_be_bytes()[..])?;
        Ok(())
    }

    /// Remove everything (before a rebuild from the start of the log).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        Ok(())
    }

    /// Whether the applied record is followed by its transaction's commit marker
    /// ([`Changes::marker_follows`]).
    pub fn marker_follows(&self) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(MARKER)?)
    }

    /// Under exactly-once: what follows is written in a transaction not yet committed.
    /// Written before the batch it marks (sled recovers a prefix of its writes, so the
    /// mark survives any crash that keeps the batch).
    pub fn mark_uncommitted(&self) -> Result<(), StoreError> {
        self.tree.insert(UNCOMMITTED, &[][..])?;
        Ok(())
    }

    /// The transaction that wrote the partition's state committed.
    pub fn mark_committed(&self) -> Result<(), StoreError> {
        self.tree.remove(UNCOMMITTED)?;
        Ok(())
    }

    /// Whether the partition holds writes of a transaction that may not have committed
    /// (a crash, an abort): they cannot be undone one by one, so the state is restored
    /// from the changelog instead, as Kafka Streams does under exactly-once.
    pub fn holds_uncommitted(&self) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(UNCOMMITTED)?)
    }

    /// Drop the state, keeping what this instance knows of the group's offsets and the
    /// holes an operator acknowledged (they are not state of the fold).
    pub fn discard_state(&self) -> Result<(), StoreError> {
        let committed = self.tree.get(COMMITTED)?;
        let hole = self.tree.get(HOLE_ACK)?;
        self.tree.clear()?;
        if let Some(v) = committed {
            self.tree.insert(COMMITTED, v)?;
        }
        if let Some(v) = hole {
            self.tree.insert(HOLE_ACK, v)?;
        }
        Ok(())
    }
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs with string keys cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_applied_with_its_offset_and_expired_keys_go_by_record_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = store.partition("raw", 3).unwrap();
        assert_eq!(p.applied_offset().unwrap(), None);
        let mut c = Changes::default();
        let pay = PaymentState::new("src", "pay");
        c.payments.insert(pay.key(), pay.clone());
        let other = PaymentState::new("other", "pay");
        c.payments.insert(other.key(), other.clone());
        let longer = PaymentState::new("src", "payment");
        c.payments.insert(longer.key(), longer);
        for (k, t) in [("a", 1_000), ("b", 5_000)] {
            c.dedup.insert(
                k.into(),
                DedupEntry {
                    first_seen_ms: t,
                    body_hash: "h".into(),
                    offset: 1,
                },
            );
        }
        c.applied = Some(41);
        c.max_ts = Some(5_000);
        p.persist(&c, &c.entries(), None).unwrap();
        assert_eq!(p.applied_offset().unwrap(), Some(41));
        assert_eq!(p.payment(&pay.key()).unwrap(), Some(pay.clone()));
        let expired = p.expired_dedup(2_000, 10).unwrap();
        assert_eq!(expired.len(), 1);
        let expiry = Changes {
            expired,
            ..Changes::default()
        };
        p.persist(&expiry, &expiry.entries(), None).unwrap();
        assert!(p.dedup("a").unwrap().is_none());
        assert!(p.dedup("b").unwrap().is_some());
        let found = store.find_payments("raw", "pay").unwrap();
        assert_eq!(found, vec![(3, other), (3, pay)], "both sources' pay, not payment");
    }

    #[test]
    fn commit_mark_only_moves_forward_and_clear_forgets_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = Store::open(dir.path(), 1 << 20).unwrap().partition("raw", 0).unwrap();
        assert_eq!(p.committed_mark().unwrap(), None);
        p.record_commit(10).unwrap();
        p.record_commit(7).unwrap();
        assert_eq!(p.committed_mark().unwrap(), Some(10));
        p.clear().unwrap();
        assert_eq!(p.committed_mark().unwrap(), None);
    }
}
