//! Under exactly-once, the gate between a stage's workers and its transaction.
//!
//! A worker decides and writes a batch inside the gate (shared: the stage's workers run
//! side by side), then records the offset after it. The committer closes the gate
//! (exclusive: every batch in flight has finished and none starts) to commit the open
//! transaction with the recorded offsets, or to abort it. After an abort, each partition
//! that wrote in it is told to rewind: its local state holds writes that never
//! happened, so it restores from the changelog and decides again from the committed
//! offset.
//!
//! A worker whose send fails cannot know what of its batch reached the transaction: it
//! marks the transaction failed, and waits at the gate until the committer has aborted
//! it. Nothing here talks to Kafka; the committer is `group::transactions`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tokio::sync::{Notify, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What the open transaction holds, per partition.
#[derive(Debug, Default)]
struct Book {
    /// The offset after the last record decided in the open transaction.
    offsets: BTreeMap<i32, i64>,
    /// Partitions that wrote (outputs, changelog entries, local state) in it.
    written: BTreeSet<i32>,
    /// Partitions whose writes were aborted: they rewind before their next batch.
    rewind: BTreeSet<i32>,
    /// A send failed: the transaction must be aborted before anything else is written.
    failed: bool,
    /// The stage's member lost its assignment: nothing may commit or be written until
    /// the coordinator has stopped the workers and the committer aborted their work.
    fenced: bool,
    /// The offset after the last record committed, per partition.
    committed: BTreeMap<i32, i64>,
}

impl Book {
    /// Whether a batch may enter.
    fn open(&self) -> bool {
        !self.failed && !self.fenced
    }
}

/// What the committer takes from the book to commit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    pub offsets: BTreeMap<i32, i64>,
    pub written: BTreeSet<i32>,
    pub failed: bool,
    /// The stage's member lost its assignment: what is pending must not commit.
    pub fenced: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty() && self.written.is_empty()
    }
}

/// One stage's gate.
#[derive(Debug, Default)]
pub struct TxnGate {
    lock: RwLock<()>,
    book: Mutex<Book>,
    /// Woken when the transaction failed (the committer aborts at once) and when it
    /// was aborted (waiting workers go on).
    changed: Notify,
}

/// Held while a batch is decided and written.
pub type Inside<'a> = RwLockReadGuard<'a, ()>;
/// Held by the committer while it commits or aborts.
pub type Closed<'a> = RwLockWriteGuard<'a, ()>;

impl TxnGate {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enter to write a batch, once no failed transaction waits for its abort; whether
    /// `partition` must rewind first (told once).
    pub async fn enter(&self, partition: i32) -> (Inside<'_>, bool) {
        loop {
            let waiting = self.changed.notified();
            let inside = self.lock.read().await;
            let rewind = {
                let mut book = self.book();
                book.open().then(|| book.rewind.remove(&partition))
            };
            if let Some(rewind) = rewind {
                return (inside, rewind);
            }
            drop(inside);
            waiting.await;
        }
    }

    /// Enter to write something that is not a batch (a reset entry): like
    /// [`TxnGate::enter`], but a pending rewind stays pending.
    pub async fn enter_write(&self) -> Inside<'_> {
        loop {
            let waiting = self.changed.notified();
            let inside = self.lock.read().await;
            if self.book().open() {
                return inside;
            }
            drop(inside);
            waiting.await;
        }
    }

    /// Whether `partition` must rewind (without taking the request): a worker with no
    /// new records asks on its timer, so aborted work is redone even when nothing more
    /// arrives for its partition.
    pub fn must_rewind(&self, partition: i32) -> bool {
        self.book().rewind.contains(&partition)
    }

    /// `partition` wrote in the open transaction (call inside).
    pub fn wrote(&self, partition: i32) {
        self.book().written.insert(partition);
    }

    /// Records up to `next` (exclusive) of `partition` are decided in the open
    /// transaction (call inside).
    pub fn decided(&self, partition: i32, next: i64) {
        let mut book = self.book();
        book.written.insert(partition);
        let at = book.offsets.entry(partition).or_insert(next);
        *at = (*at).max(next);
    }

    /// A send of `partition`'s batch failed: the transaction must be aborted.
    pub fn fail(&self, partition: i32) {
        let mut book = self.book();
        book.failed = true;
        book.written.insert(partition);
        drop(book);
        self.changed.notify_waiters();
    }

    /// The stage's member lost its assignment (called from the rebalance callback, before
    /// the coordinator gets to stop the workers): the open transaction is aborted at
    /// once, and no batch enters until [`TxnGate::unfence`]. A zombie's work must not
    /// commit, even under the group metadata of the member once it rejoined.
    pub fn fence(&self) {
        let mut book = self.book();
        book.fenced = true;
        book.failed = true;
        drop(book);
        self.changed.notify_waiters();
    }

    /// The lost partitions' workers were stopped and their work aborted: batches may
    /// enter again.
    pub fn unfence(&self) {
        self.book().fenced = false;
        self.changed.notify_waiters();
    }

    /// Whether the open transaction failed (the committer aborts it without waiting for
    /// the interval).
    pub fn failed(&self) -> bool {
        self.book().failed
    }

    /// Wait until a send fails.
    pub async fn wait_failed(&self) {
        loop {
            let waiting = self.changed.notified();
            if self.failed() {
                return;
            }
            waiting.await;
        }
    }

    /// Close the gate: every batch in flight has finished, none starts.
    pub async fn close(&self) -> Closed<'_> {
        self.lock.write().await
    }

    /// What the open transaction holds (call closed).
    pub fn pending(&self, _closed: &Closed<'_>) -> Pending {
        let book = self.book();
        Pending {
            offsets: book.offsets.clone(),
            written: book.written.clone(),
            failed: book.failed,
            fenced: book.fenced,
        }
    }

    /// The open transaction committed (call closed): a new one is open, empty.
    pub fn committed(&self, _closed: &Closed<'_>) {
        let mut book = self.book();
        let offsets = std::mem::take(&mut book.offsets);
        book.committed.extend(offsets);
        book.written.clear();
    }

    /// The offset after the last committed record of `partition`.
    pub fn last_committed(&self, partition: i32) -> Option<i64> {
        self.book().committed.get(&partition).copied()
    }

    /// The open transaction was aborted (call closed): the partitions that wrote in it
    /// rewind, except those in `gone` (no longer this instance's).
    pub fn aborted(&self, _closed: &Closed<'_>, gone: &BTreeSet<i32>) {
        let mut book = self.book();
        let written = std::mem::take(&mut book.written);
        book.rewind.extend(written.difference(gone).copied());
        for g in gone {
            book.rewind.remove(g);
            book.committed.remove(g);
        }
        book.offsets.clear();
        book.failed = false;
        drop(book);
        self.changed.notify_waiters();
    }

    /// `partitions` are no longer this instance's and wrote nothing since the last
    /// commit (a handed-over partition, after its final commit): forget them.
    pub fn forget(&self, _closed: &Closed<'_>, partitions: &BTreeSet<i32>) {
        let mut book = self.book();
        for p in partitions {
            book.rewind.remove(p);
            book.offsets.remove(p);
            book.written.remove(p);
            book.committed.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_abort_rewinds_every_partition_that_wrote_and_forgets_its_offsets() {
        let gate = TxnGate::default();
        let (inside, rewind) = gate.enter(1).await;
        assert!(!rewind);
        gate.decided(1, 10);
        gate.decided(1, 7);
        drop(inside);
        let (inside, _) = gate.enter(2).await;
        gate.decided(2, 4);
        drop(inside);
        let closed = gate.close().await;
        let p = gate.pending(&closed);
        assert_eq!(
            p.offsets,
            BTreeMap::from([(1, 10), (2, 4)]),
            "the highest offset per partition"
        );
        gate.aborted(&closed, &BTreeSet::from([2]));
        assert!(gate.pending(&closed).is_empty());
        drop(closed);
        assert!(gate.must_rewind(1) && !gate.must_rewind(2));
        assert!(gate.enter(1).await.1, "partition 1 rewinds once");
        assert!(!gate.must_rewind(1));
        assert!(!gate.enter(1).await.1);
        assert!(!gate.enter(2).await.1, "a partition that is gone does not");
    }

    #[tokio::test]
    async fn a_lost_assignment_commits_nothing_and_admits_no_batch_until_unfenced() {
        let gate = std::sync::Arc::new(TxnGate::default());
        let (inside, _) = gate.enter(1).await;
        gate.decided(1, 10);
        drop(inside);
        gate.fence();
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.enter(1).await.1 });
        let closed = gate.close().await;
        let p = gate.pending(&closed);
        assert!(
            p.fenced && p.failed,
            "what the zombie decided must be aborted, not committed"
        );
        gate.aborted(&closed, &BTreeSet::new());
        assert!(gate.pending(&closed).fenced, "an abort alone does not lift the fence");
        drop(closed);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no batch starts until the workers were stopped");
        gate.unfence();
        assert!(waiting.await.unwrap(), "partition 1 rewinds: its work was aborted");
    }

    #[tokio::test]
    async fn after_a_failed_send_nothing_enters_until_the_abort() {
        let gate = std::sync::Arc::new(TxnGate::default());
        let (inside, _) = gate.enter(1).await;
        gate.fail(1);
        drop(inside);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.enter(3).await.1 });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a batch must not start in a failed transaction");
        gate.wait_failed().await;
        let closed = gate.close().await;
        assert!(gate.pending(&closed).failed);
        gate.aborted(&closed, &BTreeSet::new());
        drop(closed);
        assert!(!waiting.await.unwrap(), "partition 3 wrote nothing: no rewind");
        assert!(gate.enter(1).await.1, "partition 1 rewinds");
    }
}
