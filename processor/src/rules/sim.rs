//! The test harness of the payment stage's rules: both stages' folds run in memory, as
//! the partition loop runs them, without Kafka or sled.

use std::collections::HashMap;

use hookstream_schemas::{DeadLetterReason, GapTimeout, PolicyEventKind};

use crate::rules::decide::Outcome;
use crate::rules::fold::{payment_step_of, policy_step, FoldSettings, View};
use crate::rules::input::Input;
use crate::rules::limits::Limits;
use crate::rules::model::{DedupEntry, EventType, Origin, Output, PaymentState, RawRecord, WebhookEvent};

/// An in-memory run of both stages' folds ([`crate::rules::fold`], as the partition
/// loop runs them): the edges, without Kafka or sled.
#[derive(Default)]
pub(crate) struct Sim {
    pub(crate) payments: HashMap<String, PaymentState>,
    pub(crate) dedup: HashMap<String, DedupEntry>,
    policies: HashMap<String, crate::rules::policy::PolicyState>,
    /// The payment stage's dead letters and the policy stage's events.
    pub(crate) outputs: Vec<Output>,
    offset: i64,
    request_offset: i64,
    limits: Limits,
    /// Each stage's clock.
    clock: Option<i64>,
    request_clock: Option<i64>,
}

pub(crate) fn record(offset: i64) -> RawRecord {
    RawRecord {
        origin: Origin {
            topic: "raw".into(),
            partition: 0,
            offset,
            timestamp_ms: 1_000 + offset,
        },
        key: Some(b"k".to_vec()),
        value: Some(vec![offset as u8]),
        headers: vec![],
    }
}

pub(crate) fn ev(pay: &str, id: &str, seq: Option<i64>, t: EventType, policy: Option<&str>) -> WebhookEvent {
    WebhookEvent {
        source: "src".into(),
        event_id: id.into(),
        payment_id: pay.into(),
        sequence: seq,
        event_type: t,
        policy_id: policy.map(Into::into),
        amount: Some(5000),
        currency: Some("KES".into()),
        occurred_at: None,
        received_at: 42,
        body_hash: format!("hash-{id}"),
    }
}

impl View for Sim {
    type Error = std::convert::Infallible;

    fn payment(&self, key: &str) -> Result<Option<PaymentState>, Self::Error> {
        Ok(self.payments.get(key).cloned())
    }

    fn dedup(&self, key: &str) -> Result<Option<DedupEntry>, Self::Error> {
        Ok(self.dedup.get(key).cloned())
    }

    fn policy(&self, policy_id: &str) -> Result<Option<crate::rules::policy::PolicyState>, Self::Error> {
        Ok(self.policies.get(policy_id).cloned())
    }
}

impl Sim {
    /// A run with `limits` instead of the defaults.
    pub(crate) fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The fold's settings with the harness's limits and windows of production's size
    /// (a 7-day dedup window, a 400-day refund window, one day ahead per record), given
    /// here: `rules` does not depend on `config`.
    fn settings(&self) -> FoldSettings {
        const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
        let fields = crate::rules::input::BodyFields::default();
        FoldSettings::new(fields, self.limits, 7 * DAY, 400 * DAY, DAY)
    }

    /// One record through the payment stage's fold, then every request it makes
    /// through the policy stage's (one partition of requests, in order).
    pub(crate) fn feed(&mut self, input: Input) -> Outcome {
        let settings = self.settings();
        let rec = record(self.offset);
        self.offset += 1;
        let Ok(d) = payment_step_of(&*self, &rec, input, self.clock, &settings);
        self.clock = Some(d.clock);
        if let Some(p) = d.payment {
            self.payments.insert(p.key(), p);
        }
        if let Some((k, v)) = d.dedup {
            self.dedup.insert(k, v);
        }
        for o in d.outputs {
            let Output::Request(r) = o else {
                self.outputs.push(o);
                continue;
            };
            let mut rec = record(self.request_offset);
            rec.value = Some(hookstream_schemas::encode(&r).expect("a request encodes"));
            self.request_offset += 1;
            let Ok(p) = policy_step(&*self, &rec, self.request_clock, &settings);
            self.request_clock = Some(p.clock);
            if let Some(st) = p.policy {
                self.policies.insert(st.policy_id.clone(), st);
            }
            self.outputs.extend(p.outputs);
        }
        d.outcome
    }

    pub(crate) fn event(&mut self, e: WebhookEvent) -> Outcome {
        self.feed(Input::Webhook(e))
    }

    /// What the worker's timer would write for this payment now, if it has a gap.
    pub(crate) fn gap_timeout(&mut self, pay: &str) -> Option<Outcome> {
        let st = self.payments.get(&crate::rules::model::payment_key("src", pay))?;
        if st.held.is_empty() {
            return None;
        }
        let g = GapTimeout {
            payment_id: pay.into(),
            source: "src".into(),
            next_expected_sequence: st.next_sequence,
            missing_sequences: vec![],
            gap_opened_at: 0,
            decided_at: 1,
        };
        Some(self.feed(Input::GapTimeout(g)))
    }

    pub(crate) fn activations(&self) -> Vec<(String, String)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Policy(p) => match &p.event {
                    PolicyEventKind::Activated(a) => Some((a.policy_id.clone(), a.activation_id.clone())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    pub(crate) fn dead_reasons(&self) -> Vec<DeadLetterReason> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Dead(d) => Some(d.reason),
                _ => None,
            })
            .collect()
    }
}
