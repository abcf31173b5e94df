//! The eviction index: which payment and policy states expire when
//! ([`crate::rules::retention`]), so that a batch can remove the ones past the
//! partition's clock without scanning every state.
//!
//! | key | value |
//! |---|---|
//! | `e` + expiry ms (8 bytes, big-endian) + store key (`p`… or `P`…) | empty: in expiry order |
//! | `E` + store key | the expiry ms (8 bytes): where the state's `e` entry is |
//!
//! Both are derived from the states' `evict_at_ms`, so a restore from the changelog
//! rebuilds them.

use super::{read_i64, PartitionStore, StoreError};

fn evict_key(at_ms: i64, store_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + store_key.len());
    k.push(b'e');
    k.extend_from_slice(&(at_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(store_key);
    k
}

fn reverse_key(store_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + store_key.len());
    k.push(b'E');
    k.extend_from_slice(store_key);
    k
}

/// The store key (`p`… or `P`…) of an `e` index key.
fn store_key_of(evict_key: &[u8]) -> &[u8] {
    evict_key.get(9..).unwrap_or_default()
}

impl PartitionStore {
    /// Point the index at a state's new expiry (`None`: does not expire), replacing its
    /// previous entry.
    pub(super) fn reindex(
        &self,
        batch: &mut sled::Batch,
        store_key: &[u8],
        evict_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let reverse = reverse_key(store_key);
        if let Some(old) = read_i64(self.tree.get(&reverse)?) {
            batch.remove(evict_key(old, store_key));
        }
        match evict_at_ms {
            Some(at) => {
                batch.insert(evict_key(at, store_key), &[][..]);
                batch.insert(reverse, &at.to_be_bytes()[..]);
            }
            None => batch.remove(reverse),
        }
        Ok(())
    }

    /// Remove an expired state (its store key, `p`… or `P`…) with its index entries and,
    /// for a payment, its gap-index entry.
    pub(super) fn evict(&self, batch: &mut sled::Batch, store_key: &[u8]) -> Result<(), StoreError> {
        if let Some(payment_key) = store_key.strip_prefix(b"p") {
            let mut g = vec![b'g'];
            g.extend_from_slice(payment_key);
            batch.remove(g);
        }
        self.reindex(batch, store_key, None)?;
        batch.remove(store_key);
        Ok(())
    }

    /// Store keys of states that expire at or before `now_ms`, at most `limit`, oldest
    /// first. An index entry its state no longer points to (left by an interrupted
    /// write) is removed here instead.
    pub fn due_evictions(&self, now_ms: i64, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let end = evict_key(now_ms.saturating_add(1), b"");
        let mut out = Vec::new();
        for item in self.tree.range(&b"e"[..]..end.as_slice()).take(limit) {
            let (k, _) = item?;
            let at = <[u8; 8]>::try_from(&k[1..9]).map(u64::from_be_bytes).ok();
            let current = read_i64(self.tree.get(reverse_key(store_key_of(&k)))?);
            if current.map(|c| c.max(0) as u64) == at {
                out.push(store_key_of(&k).to_vec());
            } else {
                self.tree.remove(&k)?;
            }
        }
        Ok(out)
    }
}
