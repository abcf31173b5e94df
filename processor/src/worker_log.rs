//! A worker's side of the log: where the group hands a newly assigned partition over,
//! bringing sled up to that point (rebuild, replay detection, sled ahead of the group),
//! and folding a range of the raw partition read on its own.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{Incoming, Processed, Worker};
use crate::consumer::raw_record;

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Position {
    /// The group's committed offset.
    Committed(i64),
    /// No committed offset: the start of the retained log.
    LogStart(i64),
}

impl Position {
    pub(super) fn offset(self) -> i64 {
        match self {
            Position::Committed(o) | Position::LogStart(o) => o,
        }
    }
}

impl Worker {
    /// Where the group will hand us records from: its committed offset, or the start of
    /// the retained log for a partition it never committed (`auto.offset.reset=earliest`).
    pub(super) async fn group_position(&self, stop: &CancellationToken) -> Option<Position> {
        let shared = self.shared.clone();
        let (topic, partition) = (shared.config.kafka.raw_topic.clone(), self.partition);
        shared
            .retry("group_position", stop, || {
                let (consumer, topic) = (shared.consumer.clone(), topic.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(&topic, partition);
                        let committed = consumer
                            .committed_offsets(tpl, Duration::from_secs(5))
                            .map_err(|e| e.to_string())?;
                        match committed.find_partition(&topic, partition).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => Ok(Position::Committed(o)),
                            _ => consumer
                                .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                                .map(|(low, _)| Position::LogStart(low))
                                .map_err(|e| e.to_string()),
                        }
                    })
                    .await
                    .map_err(|e| e.to_string())?
                }
            })
            .await
    }

    /// When the group was moved back behind what this instance itself committed
    /// (`processor replay`), drop the partition's state. False when stopped.
    async fn drop_if_replayed(&mut self, committed: i64, stop: &CancellationToken) -> bool {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let Some(mark) = shared.retry("store", stop, || async { store.committed_mark() }).await else {
            return false;
        };
        if let Some(mark) = mark.filter(|m| committed < *m) {
            tracing::warn!(
                partition = self.partition,
                committed,
                previously_committed = mark,
                "the group's offset was moved back (processor replay): rebuilding the partition's state \
                 from the log; records from the new offset on are decided and their outputs published again"
            );
            if shared.retry("store", stop, || async { store.clear() }).await.is_none() {
                return false;
            }
            shared.metrics.replays_detected.inc();
        }
        true
    }

    /// Bring sled up to the first offset the group hands us by replaying the partition
    /// with outputs suppressed (dropping it first after a replay). When sled is already
    /// ahead of the group (a crash between persisting and committing), the group's
    /// offset is moved up to it, so a quiet partition does not stay behind. Returns false
    /// when stopped.
    pub(super) async fn reconcile(&mut self, position: Position, stop: &CancellationToken) -> bool {
        let shared = self.shared.clone();
        let store = self.store.clone();
        let first_live = position.offset();
        if let Position::Committed(committed) = position {
            if !self.drop_if_replayed(committed, stop).await {
                return false;
            }
        }
        let Some(applied) = shared.retry("store", stop, || async { store.applied_offset() }).await else {
            return false;
        };
        let from = match applied {
            Some(a) if a + 1 >= first_live => None,
            Some(a) => Some(a + 1),
            None => Some(-1),
        };
        if let Some(from) = from {
            let started = Instant::now();
            let Some(n) = self.read_range(from, first_live, false, stop).await else {
                return false;
            };
            if n > 0 {
                tracing::info!(partition = self.partition, records = n, from = ?from, until = first_live,
                    elapsed_ms = started.elapsed().as_millis() as u64, "rebuilt partition state from the log");
            }
        }
        if !self.watch_stored_gaps(stop).await {
            return false;
        }
        let Some(applied) = shared.retry("store", stop, || async { store.applied_offset() }).await else {
            return false;
        };
        if let Some(a) = applied.filter(|a| *a >= first_live) {
            // sled is ahead of the group: commit what it already covers.
            self.uncommitted = Some(a);
            self.commit_if_due(false);
        }
        self.next_offset = Some(applied.map_or(first_live, |a| (a + 1).max(first_live)));
        true
    }

    /// Watch the gaps of every stored payment that holds events. False when stopped.
    pub(super) async fn watch_stored_gaps(&mut self, stop: &CancellationToken) -> bool {
        let store = self.store.clone();
        let Some(gapped) = self
            .shared
            .retry("store", stop, || async { store.payments_with_gaps() })
            .await
        else {
            return false;
        };
        for st in gapped {
            self.gaps.watch(&st.payment_id, st.next_sequence, st.held.len() as i64);
        }
        self.update_held_gauge();
        true
    }

    /// Fold records `[from, until)` (`from` -1: the start of the log), with outputs
    /// suppressed (a rebuild) or published (`live`, reading a hole in a delivery).
    /// Returns how many, or `None` when stopped.
    pub(super) async fn read_range(
        &mut self,
        from: i64,
        until: i64,
        live: bool,
        stop: &CancellationToken,
    ) -> Option<u64> {
        let cfg = &self.shared.config.kafka;
        let from = if from < 0 {
            Offset::Beginning
        } else {
            Offset::Offset(from)
        };
        let reader: StreamConsumer = match ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", format!("{}-rebuild", cfg.group_id))
            .set("enable.auto.commit", "false")
            // One reader per rebuilding partition: keep each one's pre-fetch small.
            .set("queued.max.messages.kbytes", "4096")
            .set("queued.min.messages", "2000")
            .create()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the rebuild reader");
                return None;
            }
        };
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(&cfg.raw_topic, self.partition, from);
        if let Err(e) = reader.assign(&tpl) {
            tracing::error!(error = %e, "cannot assign the rebuild reader");
            return None;
        }
        let max = self.shared.config.processing.max_batch_records.max(1);
        let mut n = 0u64;
        let mut batch = Vec::new();
        let mut last = -1;
        while last + 1 < until {
            let m = tokio::select! {
                m = reader.recv() => m,
                () = stop.cancelled() => return None,
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "rebuild read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            last = m.offset();
            if last >= until {
                break;
            }
            let (record, traceparent) = raw_record(&m);
            batch.push(Incoming {
                record: std::sync::Arc::new(record),
                traceparent,
            });
            if batch.len() >= max || last + 1 >= until {
                n += self.fold(std::mem::take(&mut batch), live, stop).await?;
            }
        }
        if !batch.is_empty() {
            n += self.fold(batch, live, stop).await?;
        }
        Some(n)
    }

    /// `process` for [`Self::read_range`]; counts rebuilt records.
    async fn fold(&mut self, batch: Vec<Incoming>, live: bool, stop: &CancellationToken) -> Option<u64> {
        let k = batch.len() as u64;
        loop {
            match self.process(&batch, live, stop).await {
                Processed::Done(applied) => {
                    if live {
                        self.uncommitted = applied.or(self.uncommitted);
                    } else {
                        self.shared.metrics.rebuilt_records.inc_by(k);
                    }
                    return Some(k);
                }
                Processed::Stopped => return None,
                Processed::Corrupt => {
                    let first = batch.first().map_or(0, |m| m.record.origin.offset);
                    if !Box::pin(self.rebuild_corrupt(first, stop)).await {
                        return None;
                    }
                }
            }
        }
    }
}
