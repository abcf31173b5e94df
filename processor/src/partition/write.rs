//! How a decided batch's outputs and changelog entries leave, under either guarantee:
//! at least once, every output is sent until acknowledged (in order, a refused one
//! replaced by its dead letter) before the entries that record it; exactly once, the
//! outputs, entries and meta entry go into the open transaction once each, and any
//! failure fails the transaction.

use tokio_util::sync::CancellationToken;

use super::batch::{Decided, Emitted};
use super::holes::StallMark;
use super::io::Backend;
use super::retry::{Backoff, Failure};
use super::worker::{Mode, Worker};
use super::Stopped;
use crate::rules::model::Output;

/// The deterministic id an output is sent with.
fn output_id(o: &Output) -> String {
    match o {
        Output::Request(r) => r.request_id.clone(),
        Output::Policy(p) => p.id().to_owned(),
        Output::Dead(d) => d.dead_letter_id.clone(),
    }
}

/// A send into the open transaction failed: the transaction must be aborted.
#[derive(Debug)]
pub(super) struct TxnSendFailed {
    /// The error and its sources.
    pub detail: String,
    /// The changelog append was refused for good. A refused output is replaced by its
    /// dead letter when the batch is decided again; a refused append is not, so the
    /// batch fails the same way until an operator fixes the topic.
    pub changelog_refused: bool,
}

impl<B: Backend> Worker<B> {
    /// Retry one of the partition's own calls (`what`: a changelog append, a control
    /// record, a store or log read) until it passes. A failure that is not transient
    /// ([`Failure`]) is retried too — skipping the call would lose state or a record —
    /// but loudly: an error, and the partition is listed as stalled (`/readyz`,
    /// `hookstream_processor_partitions_stalled`) until the call passes.
    pub(super) async fn retry<T, E, F, Fut>(
        &self,
        what: &'static str,
        stop: &CancellationToken,
        mut f: F,
    ) -> Result<T, Stopped>
    where
        E: Failure,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let cx = &self.cx;
        let mut backoff = Backoff::new(&cx.metrics, self.max_backoff(), what);
        let mut stalled = None;
        loop {
            match f().await {
                Ok(v) => {
                    if stalled.take().is_some() {
                        tracing::info!(
                            partition = self.partition,
                            what,
                            "the refused call passed; the partition goes on"
                        );
                    }
                    return Ok(v);
                }
                Err(e) => {
                    if !e.is_transient() && stalled.is_none() {
                        stalled = Some(self.stall(format!("{what} refused for good: {}", e.chain())));
                    }
                    // Stopped: the mark goes with it, as the partition does.
                    backoff.pause(&e, stop).await?;
                }
            }
        }
    }

    /// List the partition as stalled, loudly, until the returned mark is dropped.
    pub(super) fn stall(&self, reason: String) -> StallMark {
        tracing::error!(
            stage = self.stage.as_str(),
            partition = self.partition,
            reason,
            "the partition waits until the broker accepts its write (a topic's size limit or policy)"
        );
        let cx = &self.cx;
        cx.holes
            .mark_stalled(&cx.metrics.partitions_stalled, &self.topic, self.partition, reason)
    }

    /// Send every output until each is acknowledged. A transient failure pauses and
    /// sends again (same ids) every output from the first unacknowledged one on, so
    /// their order holds; a permanent one replaces the output by a smaller dead letter
    /// ([`crate::rules::fallback`]) and sends that.
    pub(super) async fn emit(&self, outputs: &mut [Emitted], stop: &CancellationToken) -> Result<(), Stopped> {
        let shared = &self.cx;
        let mut pending: Vec<usize> = (0..outputs.len()).collect();
        let mut backoff = Backoff::new(&shared.metrics, self.max_backoff(), "emit");
        loop {
            let results = {
                let batch: Vec<(&Output, Option<&str>)> = pending
                    .iter()
                    .map(|&i| (&outputs[i].output, outputs[i].traceparent.as_deref()))
                    .collect();
                shared.backend.send_each(self.stage, &batch).await
            };
            let mut failed = Vec::new();
            let mut transient: Option<String> = None;
            for (i, r) in pending.iter().copied().zip(results) {
                let Err(e) = r else { continue };
                let error = e.chain();
                failed.push(i);
                if e.is_transient() {
                    transient = Some(error);
                    continue;
                }
                let out = &mut outputs[i];
                match crate::rules::fallback::substitute(&out.output, &out.cause, &error) {
                    Some(sub) => {
                        tracing::warn!(
                            partition = self.partition,
                            offset = out.cause.origin.offset,
                            error,
                            "output refused for good; a smaller dead letter replaces it"
                        );
                        shared.metrics.outputs_refused.inc();
                        out.output = sub;
                    }
                    None => transient = Some(format!("the DLQ refuses even a coordinates-only letter: {error}")),
                }
            }
            let Some(first) = failed.first().copied() else {
                return Ok(());
            };
            // Everything from the first failure on goes again, in order (same ids):
            // re-sending only the failed ones would put them after later outputs.
            pending.retain(|&i| i >= first);
            if let Some(e) = transient {
                backoff.pause(&e, stop).await?;
            }
        }
    }

    /// Under exactly-once: send the batch's outputs (live), its changelog entries and
    /// its meta entry into the open transaction, once each, and wait for their
    /// acknowledgements; the offset after the meta entry. Any failure fails the
    /// transaction (what of the batch reached it is unknown): an output refused for good
    /// is remembered, so that when the batch is decided again its dead letter is sent
    /// instead.
    pub(super) async fn write_in_transaction(
        &mut self,
        d: &mut Decided,
        entries: &[crate::store::Entry],
        mode: Mode,
    ) -> Result<Option<i64>, TxnSendFailed> {
        let cx = self.cx.clone();
        if mode == Mode::Live && !d.outputs.is_empty() {
            for out in d.outputs.iter_mut() {
                let Some(error) = self.refused.get(&output_id(&out.output)) else {
                    continue;
                };
                if let Some(sub) = crate::rules::fallback::substitute(&out.output, &out.cause, error) {
                    cx.metrics.outputs_refused.inc();
                    out.output = sub;
                }
            }
            let batch: Vec<(&Output, Option<&str>)> = d
                .outputs
                .iter()
                .map(|o| (&o.output, o.traceparent.as_deref()))
                .collect();
            let results = cx.backend.send_each(self.stage, &batch).await;
            let mut failed = None;
            for (out, r) in d.outputs.iter().zip(results) {
                let Err(e) = r else { continue };
                let error = e.chain();
                if !e.is_transient() {
                    self.refused.insert(output_id(&out.output), error.clone());
                }
                failed = Some(error);
            }
            if let Some(detail) = failed {
                return Err(TxnSendFailed {
                    detail,
                    changelog_refused: false,
                });
            }
        }
        let mut all = entries.to_vec();
        all.extend(d.changes.meta_entry());
        if all.is_empty() {
            return Ok(None);
        }
        let topic = cx.settings.changelog(self.stage);
        let last = cx
            .backend
            .append(topic, self.partition, None, &all)
            .await
            .map_err(|e| TxnSendFailed {
                detail: e.chain(),
                changelog_refused: !e.is_transient(),
            })?;
        cx.metrics.changelog_records.inc_by(all.len() as u64);
        Ok(Some(last.last + 1))
    }
}
