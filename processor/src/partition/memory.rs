//! The partition loop's ports in memory, for its unit tests: a log per partition, the
//! group's committed offsets, and a journal of every output sent and offset committed,
//! in order, so a test can check that nothing is committed before its outputs are
//! acknowledged. Failures are injected per send call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use hookstream_schemas::{encode, GapTimeout, PolicyEventKind, RawWebhook};

use super::io::{BoxError, CommitMode, GroupOffsets, Incoming, Log, LogReader, Outputs, Position, SendError};
use crate::rules::model::{Origin, Output, RawRecord};

/// What the backend was asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Outputs acknowledged: `activated:<id>`, `cancelled:<id>`, `dead:<reason>`.
    Sent(Vec<String>),
    Commit {
        next: i64,
        sync: bool,
    },
}

/// How the next send call fails.
#[derive(Debug, Clone, Copy)]
pub enum Fail {
    /// Every output unacknowledged, transiently.
    Unavailable,
    /// Every output refused for good.
    Refused,
}

#[derive(Debug, Default)]
pub struct State {
    pub log: BTreeMap<i32, Vec<Incoming>>,
    pub committed: HashMap<i32, i64>,
    pub calls: Vec<Call>,
    pub failures: VecDeque<Fail>,
    /// Readers opened, with their start.
    pub opened: Vec<Option<i64>>,
}

/// The in-memory backend; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Memory(pub Arc<Mutex<State>>);

impl Memory {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a webhook to partition 0's log; returns it as delivered to a worker.
    pub fn append(&self, payment: &str, event_id: &str, sequence: i64, kind: &str, policy: &str) -> Incoming {
        let mut st = self.state();
        let log = st.log.entry(0).or_default();
        let offset = log.len() as i64;
        let body = serde_json::json!({ "id": event_id, "payment_id": payment, "metadata": { "policy_id": policy } });
        let raw = RawWebhook {
            event_id: event_id.into(),
            source: "src".into(),
            scheme: "hmac-sha256".into(),
            secret_index: 0,
            payment_id: payment.into(),
            event_type: Some(kind.into()),
            sequence: Some(sequence),
            received_at: 1_000 + offset,
            headers: vec![],
            body: body.to_string().into_bytes(),
        };
        let record = RawRecord {
            origin: Origin {
                topic: "raw".into(),
                partition: 0,
                offset,
                timestamp_ms: 1_000 + offset,
            },
            key: Some(payment.as_bytes().to_vec()),
            value: Some(encode(&raw).unwrap_or_default()),
            headers: vec![],
        };
        let m = Incoming {
            record: Arc::new(record),
            traceparent: None,
        };
        log.push(m.clone());
        m
    }

    /// Every output acknowledged so far, in order.
    pub fn sent(&self) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Sent(v) => Some(v.clone()),
                Call::Commit { .. } => None,
            })
            .flatten()
            .collect()
    }
}

fn describe(o: &Output) -> String {
    match o {
        Output::Policy(p) => match &p.event {
            PolicyEventKind::Activated(a) => format!("activated:{}", a.activation_id),
            PolicyEventKind::Cancelled(c) => format!("cancelled:{}", c.cancellation_id),
        },
        Output::Dead(d) => format!("dead:{}", d.reason.as_str()),
    }
}

impl Outputs for Memory {
    async fn send_each(&self, outputs: &[(&Output, Option<&str>)]) -> Vec<Result<(), SendError>> {
        let mut st = self.state();
        let fail = st.failures.pop_front();
        let error = |f: Fail| {
            let e: BoxError = "injected".into();
            match f {
                Fail::Unavailable => SendError::Unavailable(e),
                Fail::Refused => SendError::Refused(e),
            }
        };
        if let Some(f) = fail {
            return outputs.iter().map(|_| Err(error(f))).collect();
        }
        st.calls
            .push(Call::Sent(outputs.iter().map(|(o, _)| describe(o)).collect()));
        outputs.iter().map(|_| Ok(())).collect()
    }

    async fn send_gap_timeout(&self, _partition: i32, _g: &GapTimeout) -> Result<(), SendError> {
        Ok(())
    }
}

impl GroupOffsets for Memory {
    async fn position(&self, partition: i32) -> Result<Position, BoxError> {
        Ok(match self.state().committed.get(&partition) {
            Some(o) => Position::Committed(*o),
            None => Position::LogStart(0),
        })
    }

    fn commit(&self, partition: i32, next: i64, mode: CommitMode) -> Result<(), BoxError> {
        let mut st = self.state();
        st.committed.insert(partition, next);
        st.calls.push(Call::Commit {
            next,
            sync: mode == CommitMode::Sync,
        });
        Ok(())
    }
}

/// The rest of a partition's log; waits forever at its end, like a consumer.
#[derive(Debug)]
pub struct Reader(VecDeque<Incoming>);

impl LogReader for Reader {
    async fn next(&mut self) -> Result<Incoming, BoxError> {
        match self.0.pop_front() {
            Some(m) => Ok(m),
            None => std::future::pending().await,
        }
    }
}

impl Log for Memory {
    type Reader = Reader;

    fn open(&self, partition: i32, from: Option<i64>) -> Result<Reader, BoxError> {
        let mut st = self.state();
        st.opened.push(from);
        let start = from.unwrap_or(0).max(0) as usize;
        let records = st.log.get(&partition).map(|l| l.iter().skip(start).cloned().collect());
        Ok(Reader(records.unwrap_or_default()))
    }
}
