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
//! entry voids everything before it: `processor replay` (on a log that starts at 0) and
//! a replay noticed by a worker write it, so the state is rebuilt from the raw log
//! instead. A [`REPLAY`] entry keeps the state and names the range to decide again.
//!
//! At least once, each entry also carries its writer's epoch (a header), and each new
//! owner of a partition first writes a [`claim_entry`] with an epoch above every one
//! before it (`partition/epoch.rs`): a restore ignores entries of an older epoch
//! after a newer claim (a paused previous owner that woke up), and a claim voids the
//! unfinished batch before it.

use serde::{Deserialize, Serialize};

use hookstream_schemas::KafkaHeader;

use super::{expiry_key, key, read_i64, to_json, Changes, PartitionStore, StoreError, APPLIED, MARKER, MAX_TS};

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
/// The key of the entry `processor replay` writes when it moves a partition back behind
/// what the state covers and the log no longer starts at 0 ([`ReplayMark`]).
pub const REPLAY: &[u8] = b"m:replay";
/// Where the store's state is in the changelog: the offset after the last entry it
/// reflects.
const CHANGELOG_NEXT: &[u8] = b"m:changelog";
/// The highest writer epoch the state has seen in the changelog.
const WRITER_EPOCH: &[u8] = b"m:epoch";
/// The key prefix of claims, followed by the epoch (20 digits): one key per epoch, so
/// compaction keeps every claim.
const CLAIM: &[u8] = b"m:claim:";
/// The header with an entry's writer epoch (decimal).
pub const EPOCH_HEADER: &str = "hookstream-writer-epoch";

/// The header stamping an entry with its writer's `epoch`.
pub fn epoch_header(epoch: u64) -> KafkaHeader {
    KafkaHeader {
        name: EPOCH_HEADER.to_owned(),
        value: Some(epoch.to_string().into_bytes()),
    }
}

/// The writer epoch of a changelog record, `None` when unstamped (exactly-once).
pub fn epoch_of(headers: &[KafkaHeader]) -> Option<u64> {
    let h = headers.iter().rfind(|h| h.name == EPOCH_HEADER)?;
    std::str::from_utf8(h.value.as_deref()?).ok()?.parse().ok()
}

/// The entry with which a writer of `epoch` claims a partition's changelog.
pub fn claim_entry(epoch: u64) -> Entry {
    let mut key = CLAIM.to_vec();
    key.extend_from_slice(format!("{epoch:020}").as_bytes());
    Entry {
        key,
        value: Some(format!("{{\"epoch\":{epoch}}}").into_bytes()),
    }
}

/// The epoch a claim's key names; `None` for any other key.
pub fn claimed_epoch(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(CLAIM)?).ok()?.parse().ok()
}

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

/// A replay in place: the group's offset was moved back from `until` to `from`, and the
/// state, which covers both, is kept. The records in between are decided again against
/// it (each already-applied one sends again what it sent); nothing below `from` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayMark {
    pub from: i64,
    pub until: i64,
}

impl ReplayMark {
    /// Whether the group's committed offset `committed` is inside the replayed range:
    /// the replay (or what is left of it, after a restart) is still to be done.
    pub fn covers(&self, committed: i64) -> bool {
        (self.from..self.until).contains(&committed)
    }
}

/// The entry recording `mark`: a batch of its own (a restore applies it alone).
pub fn replay_entry(mark: &ReplayMark) -> Entry {
    Entry {
        key: REPLAY.to_vec(),
        value: Some(to_json(mark)),
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

    /// The highest writer epoch seen in the changelog (at least once).
    pub fn writer_epoch(&self) -> Result<Option<u64>, StoreError> {
        Ok(read_i64(self.tree.get(WRITER_EPOCH)?).map(|e| e.max(0) as u64))
    }

    /// Remember the writer epoch `epoch` (claimed or seen), and, with `next`, that the
    /// state reflects the changelog up to there.
    pub fn set_writer_epoch(&self, epoch: u64, next: Option<i64>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(WRITER_EPOCH, &(epoch as i64).to_be_bytes()[..]);
        if let Some(n) = next {
            Self::changelog_mark(&mut batch, n);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The changelog entry that writes `key`'s current value again (a tombstone when
    /// it has none): what repairs a key a foreign writer overwrote.
    pub fn entry_of(&self, key: &[u8]) -> Result<Entry, StoreError> {
        Ok(Entry {
            key: key.to_vec(),
            value: self.tree.get(key)?.map(|v| v.to_vec()),
        })
    }

    /// The meta entry of the state as it is, `None` before any record was applied.
    pub fn meta_now(&self) -> Result<Option<Entry>, StoreError> {
        let Some(applied) = self.applied_offset()? else {
            return Ok(None);
        };
        let meta = Meta {
            applied,
            max_ts: read_i64(self.tree.get(MAX_TS)?),
            marker_follows: self.tree.contains_key(MARKER)?,
        };
        Ok(Some(Entry {
            key: META.to_vec(),
            value: Some(to_json(&meta)),
        }))
    }

    /// The last replay in place restored from the changelog, if any.
    pub fn replay_mark(&self) -> Result<Option<ReplayMark>, StoreError> {
        let Some(v) = self.tree.get(REPLAY)? else {
            return Ok(None);
        };
        serde_json::from_slice(&v).map(Some).map_err(|s| corrupt(REPLAY, s))
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
                batch.insert(MARKER, &[][..]);
            } else {
                batch.remove(MARKER);
            }
            if let Some(ts) = meta.max_ts {
                batch.insert(MAX_TS, &ts.to_be_bytes()[..]);
            }
            return Ok(());
        }
        if k.as_slice() == REPLAY {
            match &e.value {
                Some(v) => {
                    let _: ReplayMark = serde_json::from_slice(v).map_err(|s| corrupt(k, s))?;
                    batch.insert(REPLAY, v.as_slice());
                }
                None => batch.remove(REPLAY),
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
#[path = "changelog_tests.rs"]
mod tests;
