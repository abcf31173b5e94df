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

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::rules::model::PaymentState;
use crate::rules::policy::PolicyState;

pub mod changelog;
mod evict;
mod flusher;
mod partition;

pub use changelog::Entry;
pub use flusher::{FlushError, Flusher};
pub use partition::{Changes, PartitionStore};

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

pub(crate) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs with string keys cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::DedupEntry;

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
