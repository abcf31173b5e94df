//! One partition's state in its sled tree: what a batch changes ([`Changes`]) and the
//! reads and the atomic write of the partition loop ([`PartitionStore`]).

use std::collections::HashMap;

use super::{expiry_key, key, read_i64, read_json, Entry, StoreError};
use super::{APPLIED, COMMITTED, HOLE_ACK, MARKER, MAX_TS, UNCOMMITTED};
use crate::rules::model::{DedupEntry, PaymentState};
use crate::rules::policy::PolicyState;

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
    pub(super) tree: sled::Tree,
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
