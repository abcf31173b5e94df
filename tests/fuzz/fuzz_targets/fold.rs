//! The processor's two folds, payment stage then policy stage, on arbitrary sequences
//! of webhooks for a few payments and policies (duplicates, refunds, gaps, sources,
//! record times in any order). Invariants: never panics; a policy never has two
//! different activations outstanding (a second needs a cancellation between); and the
//! same log gives the same outputs when every state goes through JSON between records,
//! as it does through the changelog and sled.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use hookstream_processor::rules::fold::{payment_step, policy_step, FoldSettings, View};
use hookstream_processor::rules::input::BodyFields;
use hookstream_processor::rules::limits::Limits;
use hookstream_processor::rules::model::{DedupEntry, Origin, Output, PaymentState, RawRecord};
use hookstream_processor::rules::policy::PolicyState;
use hookstream_schemas::{encode, PolicyEventKind, RawWebhook};
use libfuzzer_sys::fuzz_target;

const KINDS: [&str; 6] = [
    "payment.created",
    "payment.processing",
    "payment.completed",
    "payment.failed",
    "payment.refunded",
    "payment.unknown",
];

#[derive(Arbitrary, Debug)]
struct Event {
    payment: u8,
    source: bool,
    event: u8,
    kind: u8,
    sequence: Option<u8>,
    policy: u8,
    at_ms: u16,
}

fn record(topic: &str, offset: i64, at_ms: i64, key: &str, value: Vec<u8>) -> RawRecord {
    RawRecord {
        origin: Origin {
            topic: topic.into(),
            partition: 0,
            offset,
            timestamp_ms: at_ms,
        },
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        headers: vec![],
    }
}

fn webhook(e: &Event, offset: i64) -> RawRecord {
    let source = if e.source { "stripe" } else { "paymenthub" };
    let payment = format!("pay_{}", e.payment % 4);
    let event_id = format!("evt_{}", e.event % 16);
    let mut body = serde_json::json!({
        "id": event_id, "payment_id": payment, "type": KINDS[usize::from(e.kind) % KINDS.len()],
        "metadata": { "policy_id": format!("pol_{}", e.policy % 3) }
    });
    if let Some(s) = e.sequence {
        body["sequence"] = i64::from(s % 6).into();
    }
    let raw = RawWebhook {
        event_id,
        source: source.into(),
        scheme: "hmac-sha256".into(),
        secret_index: 0,
        payment_id: payment.clone(),
        event_type: body["type"].as_str().map(str::to_owned),
        sequence: body["sequence"].as_i64(),
        received_at: i64::from(e.at_ms),
        headers: vec![],
        body: body.to_string().into_bytes(),
    };
    record(
        "raw",
        offset,
        i64::from(e.at_ms) * 1000,
        &payment,
        encode(&raw).expect("encode"),
    )
}

/// JSON round trip, as the changelog and sled do, when `persist`.
fn through<T: serde::Serialize + serde::de::DeserializeOwned>(v: T, persist: bool) -> T {
    if !persist {
        return v;
    }
    serde_json::from_slice(&serde_json::to_vec(&v).expect("to json")).expect("from json")
}

/// A stage's state in maps.
#[derive(Default)]
struct Maps {
    payments: HashMap<String, PaymentState>,
    dedup: HashMap<String, DedupEntry>,
    policies: HashMap<String, PolicyState>,
}

impl View for Maps {
    type Error = std::convert::Infallible;

    fn payment(&self, key: &str) -> Result<Option<PaymentState>, Self::Error> {
        Ok(self.payments.get(key).cloned())
    }

    fn dedup(&self, key: &str) -> Result<Option<DedupEntry>, Self::Error> {
        Ok(self.dedup.get(key).cloned())
    }

    fn policy(&self, policy_id: &str) -> Result<Option<PolicyState>, Self::Error> {
        Ok(self.policies.get(policy_id).cloned())
    }
}

/// Both folds (production's steps, `rules::fold`) over `events`; every output, in
/// order, described.
fn fold(events: &[Event], persist: bool) -> Vec<String> {
    let limits = Limits {
        max_sequence_ahead: 4,
        max_held_events: 3,
        ..Limits::default()
    };
    // A dedup window of a minute, so record times in any order expire entries.
    let settings = FoldSettings::new(
        BodyFields::default(),
        limits,
        Duration::from_secs(60),
        Duration::from_secs(3600),
        Duration::from_secs(86_400),
    );
    let mut state = Maps::default();
    let mut clock = None;
    let mut requests = Vec::new();
    let mut out = Vec::new();
    for (offset, e) in events.iter().enumerate() {
        let rec = webhook(e, offset as i64);
        let Ok(d) = payment_step(&state, &rec, clock, &settings);
        clock = Some(d.clock);
        if let Some(p) = d.payment {
            state.payments.insert(p.key(), through(p, persist));
        }
        if let Some((k, entry)) = d.dedup {
            state.dedup.insert(k, through(entry, persist));
        }
        for o in d.outputs {
            match o {
                Output::Request(r) => requests.push(r),
                other => out.push(format!("{other:?}")),
            }
        }
    }
    let mut clock = None;
    let mut active: HashMap<String, String> = HashMap::new();
    for (offset, r) in requests.into_iter().enumerate() {
        let rec = record(
            "requests",
            offset as i64,
            0,
            &r.policy_id.clone(),
            encode(&r).expect("encode"),
        );
        let Ok(d) = policy_step(&state, &rec, clock, &settings);
        clock = Some(d.clock);
        if let Some(p) = d.policy {
            state.policies.insert(p.policy_id.clone(), through(p, persist));
        }
        for o in d.outputs {
            if let Output::Policy(p) = &o {
                match &p.event {
                    PolicyEventKind::Activated(a) => {
                        if let Some(held) = active.get(&p.policy_id) {
                            assert_eq!(
                                held, &a.activation_id,
                                "two activations outstanding for {}",
                                p.policy_id
                            );
                        }
                        active.insert(p.policy_id.clone(), a.activation_id.clone());
                    }
                    PolicyEventKind::Cancelled(_) => {
                        active.remove(&p.policy_id);
                    }
                    PolicyEventKind::Duplicated(_) => {}
                }
            }
            out.push(format!("{o:?}"));
        }
    }
    out
}

fuzz_target!(|events: Vec<Event>| {
    let events = &events[..events.len().min(64)];
    let direct = fold(events, false);
    let persisted = fold(events, true);
    assert_eq!(
        direct, persisted,
        "the same log, its states through JSON: other outputs"
    );
});
