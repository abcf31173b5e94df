//! A worker's queue, bounded by the bytes of its records as well as by their count.
//!
//! A count alone bounds nothing when a record can be 900 KiB: 1,000 queued records of a
//! replayed large webhook are 900 MB. So a record is charged against its partition's
//! byte budget before it enters the queue, and the charge travels with it (its clones
//! share it) until the worker is done with it — the batch it is decided in included.
//! A full budget holds up the partition's feed, as a full queue does: backpressure on
//! this partition only.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::io::Incoming;

/// The budget's unit: permits are KiB, so budgets of GiBs fit a semaphore.
const UNIT: usize = 1024;

/// What a record holds of its partition's budget, given back when its last clone drops.
#[derive(Debug, Clone, Default)]
pub struct Held {
    _charge: Option<Arc<OwnedSemaphorePermit>>,
}

/// The sending side of a worker's queue, with its byte budget.
#[derive(Debug, Clone)]
pub struct Feeder {
    tx: mpsc::Sender<Incoming>,
    kib: Arc<Semaphore>,
    total_kib: usize,
}

/// The worker's queue is closed (the worker is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Feeder {
    /// A queue of `records` and `bytes` at most (each at least one), and its receiver.
    pub fn channel(records: usize, bytes: usize) -> (Self, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(records.max(1));
        let total_kib = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        let feeder = Self {
            tx,
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
        };
        (feeder, rx)
    }

    /// Wait until `m` fits the budget and the queue, then queue it. A record larger than
    /// the whole budget waits for all of it.
    pub async fn send(&self, mut m: Incoming) -> Result<(), Closed> {
        let kib = m.record.size_bytes().div_ceil(UNIT).clamp(1, self.total_kib);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        // The semaphore is never closed: a failure here cannot happen, and would only
        // leave the record uncharged.
        if let Ok(permit) = self.kib.clone().acquire_many_owned(kib).await {
            m.held = Held {
                _charge: Some(Arc::new(permit)),
            };
        }
        self.tx.send(m).await.map_err(|_| Closed)
    }

    /// Bytes the queued records and the worker's current batch hold (a multiple of KiB).
    pub fn held_bytes(&self) -> usize {
        (self.total_kib - self.kib.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::{Origin, RawRecord};
    use std::time::Duration;

    fn record(bytes: usize) -> Incoming {
        Incoming {
            record: Arc::new(RawRecord {
                origin: Origin {
                    topic: "raw".into(),
                    partition: 0,
                    offset: 0,
                    timestamp_ms: 1,
                },
                key: None,
                value: Some(vec![0; bytes]),
                headers: Vec::new(),
            }),
            traceparent: None,
            held: Held::default(),
        }
    }

    #[tokio::test]
    async fn records_wait_for_bytes_until_the_worker_is_done_with_earlier_ones() {
        let (feeder, mut rx) = Feeder::channel(100, 10 * UNIT);
        feeder.send(record(6 * UNIT)).await.expect("fits");
        let blocked = tokio::time::timeout(Duration::from_millis(50), feeder.send(record(6 * UNIT))).await;
        assert!(blocked.is_err(), "12 KiB do not fit in 10: the feed waits");
        let first = rx.recv().await.expect("queued");
        assert_eq!(feeder.held_bytes(), 6 * UNIT, "received, but still held by the worker");
        let copy = first.clone();
        drop(first);
        assert_eq!(feeder.held_bytes(), 6 * UNIT, "a clone keeps the charge");
        drop(copy);
        tokio::time::timeout(Duration::from_secs(1), feeder.send(record(6 * UNIT)))
            .await
            .expect("fits once the worker dropped the first")
            .expect("queued");
        // Larger than the whole budget: waits for all of it, then goes alone.
        drop(rx.recv().await);
        feeder.send(record(50 * UNIT)).await.expect("alone");
        assert_eq!(feeder.held_bytes(), 10 * UNIT);
    }
}
