//! The partition loop's ports in memory, for its unit tests: a log per partition, the
//! group's committed offsets, and a journal of every output sent and offset committed,
//! in order, so a test can check that nothing is committed before its outputs are
//! acknowledged. Requests to the policy stage are appended to the `requests` log
//! (one partition), as the broker would, so a policy-stage worker can read them.
//! Failures are injected per send call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use hookstream_schemas::{encode, GapTimeout, KafkaHeader, PolicyEventKind, RawWebhook};

/// The payment stage's input topic in these tests.
pub const RAW: &str = "raw";
/// The policy stage's input topic in these tests (one partition).
pub const REQUESTS: &str = "requests";
/// The stages' changelogs in these tests.
pub const RAW_CHANGELOG: &str = "payments-changelog";
pub const REQUESTS_CHANGELOG: &str = "policies-changelog";

use super::io::{
    Appended, BoxError, Changelog, CommitMode, GroupOffsets, Incoming, Log, LogReader, Outputs, Position, SendError,
};
use super::Stage;
use crate::rules::model::{Origin, Output, RawRecord};
use crate::store::Entry;

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
    /// Only the output at this index of the call unacknowledged, transiently; the
    /// others are sent.
    UnavailableAt(usize),
}

#[derive(Debug, Default)]
pub struct State {
    pub log: BTreeMap<(String, i32), Vec<Incoming>>,
    pub committed: HashMap<(String, i32), i64>,
    pub calls: Vec<Call>,
    pub failures: VecDeque<Fail>,
    /// Readers opened, with their start.
    pub opened: Vec<Option<i64>>,
    /// The first offset each log still has (0 when absent).
    pub log_start: HashMap<(String, i32), i64>,
    /// How many of the next changelog appends fail (transiently), and how many entries
    /// of each failed one are written first.
    pub changelog_failures: VecDeque<usize>,
    /// How many of the next changelog appends the broker refuses for good.
    pub changelog_refusals: usize,
    /// How many of the next position requests fail for a missing grant.
    pub position_denials: usize,
    /// Every dead letter acknowledged, in order.
    pub letters: Vec<hookstream_schemas::DeadLetter>,
}

/// The in-memory backend; clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Memory(pub Arc<Mutex<State>>);

impl Memory {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a webhook from source `src` to partition 0 of the raw log; returns it as
    /// delivered to a worker.
    pub fn append(&self, payment: &str, event_id: &str, sequence: i64, kind: &str, policy: &str) -> Incoming {
        self.append_from("src", payment, event_id, sequence, kind, policy)
    }

    /// [`Self::append`] for another source.
    pub fn append_from(
        &self,
        source: &str,
        payment: &str,
        event_id: &str,
        sequence: i64,
        kind: &str,
        policy: &str,
    ) -> Incoming {
        let offset = self.records(RAW).len() as i64;
        self.append_at(1_000 + offset, source, payment, event_id, sequence, kind, policy)
    }

    /// [`Self::append_from`] with the record time `at_ms`.
    #[allow(clippy::too_many_arguments)] // a record's fields, for tests
    pub fn append_at(
        &self,
        at_ms: i64,
        source: &str,
        payment: &str,
        event_id: &str,
        sequence: i64,
        kind: &str,
        policy: &str,
    ) -> Incoming {
        let mut st = self.state();
        let log = st.log.entry((RAW.to_owned(), 0)).or_default();
        let offset = log.len() as i64;
        let body = serde_json::json!({ "id": event_id, "payment_id": payment, "metadata": { "policy_id": policy } });
        let raw = RawWebhook {
            event_id: event_id.into(),
            source: source.into(),
            scheme: "hmac-sha256".into(),
            secret_index: 0,
            payment_id: payment.into(),
            event_type: Some(kind.into()),
            sequence: Some(sequence),
            received_at: at_ms,
            headers: vec![],
            body: body.to_string().into_bytes(),
        };
        let record = RawRecord {
            origin: Origin {
                topic: RAW.into(),
                partition: 0,
                offset,
                timestamp_ms: at_ms,
            },
            key: Some(payment.as_bytes().to_vec()),
            value: Some(encode(&raw).unwrap_or_default()),
            headers: vec![],
        };
        let m = Incoming {
            record: Arc::new(record),
            traceparent: None,
            held: Default::default(),
        };
        log.push(m.clone());
        m
    }

    /// Append `of` again as `processor dlq redrive` does, continuing the chain of the
    /// dead letter `root`.
    pub fn append_redriven(&self, of: &Incoming, root: &str) -> Incoming {
        let mut st = self.state();
        let log = st.log.entry((RAW.to_owned(), 0)).or_default();
        let mut record = (*of.record).clone();
        record.origin.offset = log.len() as i64;
        record.headers.push(KafkaHeader {
            name: hookstream_schemas::topics::headers::REDRIVE_OF.into(),
            value: Some(root.as_bytes().to_vec()),
        });
        let m = Incoming {
            record: Arc::new(record),
            traceparent: None,
            held: Default::default(),
        };
        log.push(m.clone());
        m
    }

    /// Every dead letter acknowledged so far.
    pub fn dead_letters(&self) -> Vec<hookstream_schemas::DeadLetter> {
        self.state().letters.clone()
    }

    /// Every record of `topic`'s partition 0.
    pub fn records(&self, topic: &str) -> Vec<Incoming> {
        self.state()
            .log
            .get(&(topic.to_owned(), 0))
            .cloned()
            .unwrap_or_default()
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
            PolicyEventKind::Duplicated(d) => format!("duplicate:{}", d.duplicate_id),
        },
        Output::Request(r) => format!("request:{:?}:{}", r.kind, r.activation_id),
        Output::Dead(d) => format!("dead:{}", d.reason.as_str()),
    }
}

impl Outputs for Memory {
    async fn send_each(&self, _stage: Stage, outputs: &[(&Output, Option<&str>)]) -> Vec<Result<(), SendError>> {
        let mut st = self.state();
        let fail = st.failures.pop_front();
        let error = |f: Fail| {
            let e: BoxError = "injected".into();
            match f {
                Fail::Unavailable | Fail::UnavailableAt(_) => SendError::Unavailable(e),
                Fail::Refused => SendError::Refused(e),
            }
        };
        let skip = match fail {
            Some(Fail::UnavailableAt(i)) => Some(i),
            Some(f) => return outputs.iter().map(|_| Err(error(f))).collect(),
            None => None,
        };
        let sent: Vec<_> = outputs
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, o)| *o)
            .collect();
        st.calls
            .push(Call::Sent(sent.iter().map(|(o, _)| describe(o)).collect()));
        for (o, _) in &sent {
            if let Output::Dead(d) = o {
                st.letters.push(d.clone());
            }
            if let Output::Request(r) = o {
                let log = st.log.entry((REQUESTS.to_owned(), 0)).or_default();
                let offset = log.len() as i64;
                let record = RawRecord {
                    origin: Origin {
                        topic: REQUESTS.into(),
                        partition: 0,
                        offset,
                        timestamp_ms: r.received_at,
                    },
                    key: Some(r.policy_id.as_bytes().to_vec()),
                    value: Some(encode(r).unwrap_or_default()),
                    headers: vec![],
                };
                log.push(Incoming {
                    record: Arc::new(record),
                    traceparent: None,
                    held: Default::default(),
                });
            }
        }
        (0..outputs.len())
            .map(|i| match skip {
                Some(s) if s == i => Err(error(Fail::Unavailable)),
                _ => Ok(()),
            })
            .collect()
    }

    async fn send_gap_timeout(&self, _partition: i32, _g: &GapTimeout) -> Result<(), SendError> {
        Ok(())
    }
}

impl Changelog for Memory {
    async fn append(
        &self,
        topic: &str,
        partition: i32,
        epoch: Option<u64>,
        entries: &[Entry],
    ) -> Result<Appended, SendError> {
        let mut st = self.state();
        if st.changelog_refusals > 0 {
            st.changelog_refusals -= 1;
            return Err(SendError::Refused("injected: record too large".into()));
        }
        let written = st.changelog_failures.pop_front();
        let log = st.log.entry((topic.to_owned(), partition)).or_default();
        let first = log.len() as i64;
        let headers: Vec<KafkaHeader> = epoch.map(crate::store::changelog::epoch_header).into_iter().collect();
        for e in entries.iter().take(written.unwrap_or(usize::MAX)) {
            let record = RawRecord {
                origin: Origin {
                    topic: topic.into(),
                    partition,
                    offset: log.len() as i64,
                    timestamp_ms: 0,
                },
                key: Some(e.key.clone()),
                value: e.value.clone(),
                headers: headers.clone(),
            };
            log.push(Incoming {
                record: Arc::new(record),
                traceparent: None,
                held: Default::default(),
            });
        }
        match written {
            Some(_) => Err(SendError::Unavailable("injected".into())),
            None => Ok(Appended {
                first,
                last: log.len() as i64 - 1,
            }),
        }
    }
}

impl GroupOffsets for Memory {
    async fn position(&self, topic: &str, partition: i32) -> Result<Position, BoxError> {
        let mut st = self.state();
        if st.position_denials > 0 {
            st.position_denials -= 1;
            let denied: BoxError = "group authorization failed".into();
            return Err(Box::new(super::io::NeedsOperator(denied)));
        }
        Ok(match st.committed.get(&(topic.to_owned(), partition)) {
            Some(o) => Position::Committed(*o),
            None => Position::LogStart(0),
        })
    }

    fn commit(&self, topic: &str, partition: i32, next: i64, mode: CommitMode) -> Result<(), BoxError> {
        let mut st = self.state();
        st.committed.insert((topic.to_owned(), partition), next);
        st.calls.push(Call::Commit {
            next,
            sync: mode == CommitMode::Sync,
        });
        Ok(())
    }
}

/// The rest of a partition's log; tells its end once, then waits forever, like a
/// consumer with `enable.partition.eof`.
#[derive(Debug)]
pub struct Reader(VecDeque<Incoming>, bool);

impl LogReader for Reader {
    async fn next(&mut self) -> Result<Option<Incoming>, BoxError> {
        match self.0.pop_front() {
            Some(m) => Ok(Some(m)),
            None if !self.1 => {
                self.1 = true;
                Ok(None)
            }
            None => std::future::pending().await,
        }
    }
}

impl Log for Memory {
    type Reader = Reader;

    fn open(&self, topic: &str, partition: i32, from: Option<i64>) -> Result<Reader, BoxError> {
        let mut st = self.state();
        st.opened.push(from);
        let first = st.log_start.get(&(topic.to_owned(), partition)).copied().unwrap_or(0);
        let start = from.unwrap_or(0).max(first).max(0) as usize;
        let records = st
            .log
            .get(&(topic.to_owned(), partition))
            .map(|l| l.iter().skip(start).cloned().collect());
        Ok(Reader(records.unwrap_or_default(), false))
    }

    async fn log_start(&self, topic: &str, partition: i32) -> Result<i64, BoxError> {
        Ok(self
            .state()
            .log_start
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0))
    }

    async fn log_end(&self, topic: &str, partition: i32) -> Result<i64, BoxError> {
        Ok(self
            .state()
            .log
            .get(&(topic.to_owned(), partition))
            .map_or(0, |l| l.len() as i64))
    }
}
