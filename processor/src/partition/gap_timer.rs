//! The gap timer: a payment whose sequence gap stays open past the gap timeout gets a
//! `GapTimeout` control record written into its own partition of the raw topic. The
//! decision takes effect when the record is read back (`decide`), so a replay makes it
//! in the same place in the log.

use std::time::UNIX_EPOCH;

use hookstream_schemas::{list_sequences, DeadLetterReason, GapTimeout};
use tokio_util::sync::CancellationToken;

use super::io::Backend;
use super::retry::now_ms;
use super::worker::Worker;
use super::Stopped;
use crate::rules::limits::{describe, missing_ranges};

impl<B: Backend> Worker<B> {
    /// Write a GapTimeout for every gap open past the timeout.
    pub(super) async fn check_gaps(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let timeout = self.cx.settings.processing.gap_timeout;
        let shared = self.cx.clone();
        for due in self.gaps.due(timeout) {
            let Ok(Some(st)) = self.store.payment(&due.key) else {
                // Unreadable now: asked again after another timeout.
                self.gaps.requested(&due.key);
                continue;
            };
            // Ranges, not numbers: a gap can span a thousand sequence numbers.
            let missing = missing_ranges(st.next_sequence, &st.held);
            let g = GapTimeout {
                payment_id: st.payment_id.clone(),
                source: st.source.clone(),
                next_expected_sequence: due.next_expected,
                missing_sequences: list_sequences(&missing),
                gap_opened_at: due
                    .opened
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                decided_at: now_ms(),
            };
            let partition = self.partition;
            match self.gate.clone() {
                // Under exactly-once the control record is written in the stage's
                // transaction, once: a failure fails it, and the rewind asks again.
                Some(gate) => {
                    let (inside, rewind) = tokio::select! {
                        e = gate.enter(partition) => e,
                        () = stop.cancelled() => return Err(Stopped),
                    };
                    if rewind {
                        drop(inside);
                        return Box::pin(self.rewind(stop)).await;
                    }
                    if let Err(e) = shared.backend.send_gap_timeout(partition, &g).await {
                        tracing::warn!(partition, error = %e, "a control record was not written; the transaction is aborted");
                        gate.fail(partition);
                        return Ok(());
                    }
                    gate.wrote(partition);
                }
                None => {
                    self.retry("gap timeout", stop, || shared.backend.send_gap_timeout(partition, &g))
                        .await?;
                }
            }
            shared.metrics.gap_timeouts.inc();
            tracing::info!(
                payment_id = st.payment_id,
                source = st.source,
                partition,
                next_expected = due.next_expected,
                missing = describe(&missing),
                reason = DeadLetterReason::SequenceGapTimeout.as_str(),
                "gap timed out; control record written"
            );
            self.gaps.requested(&due.key);
        }
        Ok(())
    }
}
