//! The store's changelog: every change to a partition's state as a record of a
//! compacted topic (Kafka Streams' changelog-backed stores), so the state outlives the
//! input topic's retention and any local directory.
//!
//! An entry's key is the store key (`p`…, `d`…, `P`…, see the module above) and its value
//! the same JSON sled holds; a deleted key is a tombstone. The indexes (`x`, `g`) are not
//! logged: they are derived from the values when restoring.
//!
//! A batch's entries are written first and acknowledged, then its [`META`] entry (the
//! applied offset and the partition's clock): a restore applies what precedes the last
//! meta entry and ignores anything after it (a batch whose writer stopped half-way; the
//! records it came from are decided again, writing the same values again). A [`RESET`]
//! entry voids everything before it: `processor replay` and a replay noticed by a worker
//! write it, so the state is rebuilt from the raw log instead.

use serde::{Deserialize, Serialize};

use super::{expiry_key, key, to_json, Changes, PartitionStore, StoreError, APPLIED, MAX_TS};
#[cfg(test)]
use crate::rules::model::{DedupEntry, PaymentState};

/// What a restore reads of a payment's or a policy's state: the fields its indexes are
/// derived from. The rest of the JSON is skipped, not built (a restore reads every
/// state once); the fold reads the whole value, and one that does not read back is
/// rebuilt then.
#[derive(Deserialize)]
struct Indexed {
    #[serde(default)]
    held: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
    #[serde(default)]
    evict_at_ms: Option<i64>,
}

/// What a restore reads of a dedup entry.
#[derive(Deserialize)]
struct FirstSeen {
    first_seen_ms: i64,
}

/// The key of a batch's closing entry.
pub const META: &[u8] = b"m:applied";
/// The key of the entry that voids everything before it.
pub const RESET: &[u8] = b"m:reset";
/// Where the store's state is in the changelog: the offset after the last entry it
/// reflects.
const CHANGELOG_NEXT: &[u8] = b"m:changelog";

/// One changelog record: a store key and its new value, `None` for a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The value of a [`META`] entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Offset of the last input record the state covers.
    pub applied: i64,
    /// The partition's clock after it (ms).
    pub max_ts: Option<i64>,
    /// [`Changes::marker_follows`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub marker_follows: bool,
}

impl Changes {
    /// The changelog entries of this batch's state changes, without the closing meta
    /// entry ([`Changes::meta_entry`]); `expired` dedup keys become tombstones.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.payments.len() + self.policies.len() + self.dedup.len());
        for (id, st) in &self.payments {
            out.push(Entry {
                key: key(b'p', id),
                value: Some(to_json(st)),
            });
        }
        for (id, st) in &self.policies {
            out.push(Entry {
                key: key(b'P', id),
                value: Some(to_json(st)),
            });
        }
        for (k, e) in &self.dedup {
            out.push(Entry {
                key: key(b'd', k),
                value: Some(to_json(e)),
            });
        }
        for k in &self.evicted {
            out.push(Entry {
                key: k.clone(),
                value: None,
            });
        }
        for x in &self.expired {
            let mut k = vec![b'd'];
            k.extend_from_slice(&x[9..]);
            out.push(Entry { key: k, value: None });
        }
        out
    }

    /// The entry that closes the batch, `None` when the batch applied nothing.
    pub fn meta_entry(&self) -> Option<Entry> {
        let applied = self.applied?;
        Some(Entry {
            key: META.to_vec(),
            value: Some(to_json(&Meta {
                applied,
                max_ts: self.max_ts,
                marker_follows: self.marker_follows,
            })),
        })
    }
}

/// The entry that voids the state before it.
pub fn reset_entry() -> Entry {
    Entry {
        key: RESET.to_vec(),
        value: Some(b"{}".to_vec()),
    }
}

fn corrupt(k: &[u8], source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    }
}

impl PartitionStore {
    /// The changelog offset after the last entry this state reflects, `None` when it
    /// was never restored from nor written to a changelog.
    pub fn changelog_next(&self) -> Result<Option<i64>, StoreError> {
        Ok(super::read_i64(self.tree.get(CHANGELOG_NEXT)?))
    }

    /// Remember that the state reflects the changelog up to `next` (exclusive).
    pub(super) fn changelog_mark(batch: &mut sled::Batch, next: i64) {
        batch.insert(CHANGELOG_NEXT, &next.to_be_bytes()[..]);
    }

    /// Apply changelog entries read back (in offset order) in one atomic sled batch,
    /// the derived indexes included; a [`RESET`] entry clears the partition first.
    /// `next` is the changelog offset after the last of them.
    pub fn restore(&self, entries: &[Entry], next: i64) -> Result<(), StoreError> {
        let start = entries.iter().rposition(|e| e.key == RESET).map_or(0, |i| {
            // Everything before the reset is void, in sled too.
            i + 1
        });
        if start > 0 {
            self.clear()?;
        }
        // Only the last version of each key: the eviction index reads the previous
        // one from the tree, not from the batch being built.
        let live = &entries[start..];
        let mut last = std::collections::HashMap::with_capacity(live.len());
        for (i, e) in live.iter().enumerate() {
            last.insert(e.key.as_slice(), i);
        }
        let mut batch = sled::Batch::default();
        for (i, e) in live.iter().enumerate() {
            if last.get(e.key.as_slice()) == Some(&i) {
                self.restore_one(&mut batch, e)?;
            }
        }
        Self::changelog_mark(&mut batch, next);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    fn restore_one(&self, batch: &mut sled::Batch, e: &Entry) -> Result<(), StoreError> {
        let k = &e.key;
        if k.as_slice() == META {
            let Some(v) = &e.value else { return Ok(()) };
            let meta: Meta = serde_json::from_slice(v).map_err(|s| corrupt(k, s))?;
            batch.insert(APPLIED, &meta.applied.to_be_bytes()[..]);
            if meta.marker_follows {
                batch.insert(super::MARKER, &[][..]);
            } else {
                batch.remove(super::MARKER);
            }
            if let Some(ts) = meta.max_ts {
                batch.insert(MAX_TS, &ts.to_be_bytes()[..]);
            }
            return Ok(());
        }
        match (k.first(), &e.value) {
            (Some(b'p'), Some(v)) => {
                let st: Indexed = serde_json::from_slice(v).map_err(|s| corrupt(k, s))?;
                let mut g = vec![b'g'];
                g.extend_from_slice(&k[1..]);
                if st.held.is_empty() {
                    batch.remove(g);
                } else {
                    batch.insert(g, &[][..]);
                }
                self.reindex(batch, k, st.evict_at_ms)?;
                batch.insert(k.as_slice(), v.as_slice());
            }
            (Some(b'd'), Some(v)) => {
                let d: FirstSeen = serde_json::from_slice(v).map_err(|s| corrupt(k, s))?;
                let dedup_key = String::from_utf8_lossy(&k[1..]);
                batch.insert(expiry_key(d.first_seen_ms, &dedup_key), &[][..]);
                batch.insert(k.as_slice(), v.as_slice());
            }
            (Some(b'd'), None) => {
                // The expiry index entry, if any, is swept with the next expiry.
                batch.remove(k.as_slice());
            }
            (Some(b'p'), None) => {
                let payment_key = String::from_utf8_lossy(&k[1..]);
                batch.remove(key(b'g', &payment_key));
                self.reindex(batch, k, None)?;
                batch.remove(k.as_slice());
            }
            (Some(b'P'), Some(v)) => {
                let st: Indexed = serde_json::from_slice(v).map_err(|s| corrupt(k, s))?;
                self.reindex(batch, k, st.evict_at_ms)?;
                batch.insert(k.as_slice(), v.as_slice());
            }
            (Some(b'P'), None) => {
                self.reindex(batch, k, None)?;
                batch.remove(k.as_slice());
            }
            // Keys of a later version: ignored rather than guessed at.
            _ => tracing::warn!(key = %String::from_utf8_lossy(k), "unknown changelog key ignored"),
        }
        Ok(())
    }

    /// Expiry-index keys of dedup entries first seen before `cutoff_ms` (record time),
    /// at most `limit`, oldest first: the batch being persisted deletes them and logs
    /// their tombstones ([`Changes::set_expired`]). An index entry whose dedup entry
    /// has since been written again (a restore leaves the old one) is removed here
    /// instead: it must not expire the newer entry.
    pub fn expired_dedup(&self, cutoff_ms: i64, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = expiry_key(cutoff_ms, "");
        let mut out = Vec::new();
        for item in self.tree.range(&b"x"[..]..end.as_slice()).take(limit) {
            let (x, _) = item?;
            let at = <[u8; 8]>::try_from(&x[1..9]).map(u64::from_be_bytes).ok();
            let mut d = vec![b'd'];
            d.extend_from_slice(&x[9..]);
            let current = match self.tree.get(&d)? {
                Some(v) => serde_json::from_slice::<FirstSeen>(&v)
                    .ok()
                    .map(|f| f.first_seen_ms.max(0) as u64),
                None => None,
            };
            if current.is_some() && current == at {
                out.push(x.to_vec());
            } else {
                self.tree.remove(&x)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn dedup(first_seen_ms: i64) -> DedupEntry {
        DedupEntry {
            first_seen_ms,
            body_hash: "h".into(),
            offset: 1,
        }
    }

    #[test]
    fn a_store_restored_from_its_entries_holds_the_same_state() {
        let store = Store::temporary().unwrap();
        let (a, b) = (store.partition("raw", 0).unwrap(), store.partition("raw", 1).unwrap());
        let mut c = Changes::default();
        let pay = PaymentState::new("src", "pay");
        c.payments.insert(pay.key(), pay.clone());
        c.dedup.insert("src\0e1".into(), dedup(1_000));
        c.dedup.insert("src\0e2".into(), dedup(9_000));
        c.applied = Some(7);
        c.max_ts = Some(9_000);
        a.persist(&c, &c.entries(), Some(5)).unwrap();
        let mut second = Changes {
            expired: a.expired_dedup(2_000, 10).unwrap(),
            applied: Some(8),
            max_ts: Some(9_000),
            ..Changes::default()
        };
        assert_eq!(second.expired.len(), 1);
        second.payments.insert(pay.key(), pay.clone());
        a.persist(&second, &second.entries(), Some(9)).unwrap();

        let mut log = c.entries();
        log.extend(c.meta_entry());
        log.extend(second.entries());
        log.extend(second.meta_entry());
        b.restore(&log, 9).unwrap();
        let strip = |d: Vec<(Vec<u8>, Vec<u8>)>| d.into_iter().filter(|(k, _)| k[0] != b'x').collect::<Vec<_>>();
        assert_eq!(strip(a.dump()), strip(b.dump()));
        assert_eq!(b.applied_offset().unwrap(), Some(8));
        assert!(b.dedup("src\0e1").unwrap().is_none());
        assert_eq!(b.changelog_next().unwrap(), Some(9));
    }

    #[test]
    fn a_dedup_key_seen_again_after_its_window_keeps_its_new_entry() {
        let store = Store::temporary().unwrap();
        let (a, b) = (store.partition("raw", 0).unwrap(), store.partition("raw", 1).unwrap());
        let k = "src\0e1";
        let mut first = Changes::default();
        first.dedup.insert(k.into(), dedup(1_000));
        first.applied = Some(0);
        a.persist(&first, &first.entries(), Some(2)).unwrap();
        // Seen again at 50 s, past a 10 s window: the batch writes a new entry while the
        // old one is due to expire.
        let mut again = Changes::default();
        again.dedup.insert(k.into(), dedup(50_000));
        again.applied = Some(1);
        again.set_expired(a.expired_dedup(40_000, 10).unwrap());
        a.persist(&again, &again.entries(), Some(4)).unwrap();
        assert_eq!(
            a.dedup(k).unwrap().map(|d| d.first_seen_ms),
            Some(50_000),
            "the new entry stays"
        );
        let mut log = first.entries();
        log.extend(first.meta_entry());
        log.extend(again.entries());
        log.extend(again.meta_entry());
        b.restore(&log[..2], 2).unwrap();
        b.restore(&log[2..], 4).unwrap();
        assert_eq!(
            b.dedup(k).unwrap().map(|d| d.first_seen_ms),
            Some(50_000),
            "restored too"
        );
        // The old index entry left by the restore does not expire the new entry early.
        assert!(b.expired_dedup(40_000, 10).unwrap().is_empty());
        assert_eq!(b.dedup(k).unwrap().map(|d| d.first_seen_ms), Some(50_000));
    }

    #[test]
    fn a_reset_entry_voids_what_came_before_it() {
        let store = Store::temporary().unwrap();
        let p = store.partition("raw", 0).unwrap();
        let mut c = Changes::default();
        let pay = PaymentState::new("src", "pay");
        c.payments.insert(pay.key(), pay);
        c.applied = Some(3);
        let mut log = c.entries();
        log.extend(c.meta_entry());
        log.push(reset_entry());
        p.restore(&log, 3).unwrap();
        assert_eq!(p.applied_offset().unwrap(), None);
        assert!(p.payment("pay\0src").unwrap().is_none());
    }
}
