//! Deterministic ids and the dead-letter builder the rules use: every record the
//! processor writes carries an id that is a hash of what caused it, so a re-send after a
//! crash or a replay is the identical record (DESIGN.md, principle 4).

use hookstream_schemas::{list_sequences, DeadLetter, DeadLetterReason, PolicyRequestKind, SequenceRange};

use crate::rules::input::sha256_hex;
use crate::rules::model::{Output, RawRecord};

/// The dedup key of an event.
pub fn dedup_key(source: &str, event_id: &str) -> String {
    format!("{source}\u{0}{event_id}")
}

/// Deterministic activation id: the same completed event for the same policy always
/// gives the same id.
pub fn activation_id(policy_id: &str, source: &str, event_id: &str) -> String {
    sha256_hex(&[
        b"activation\n",
        policy_id.as_bytes(),
        b"\n",
        source.as_bytes(),
        b"\n",
        event_id.as_bytes(),
    ])
}

pub fn cancellation_id(policy_id: &str, source: &str, event_id: &str) -> String {
    sha256_hex(&[
        b"cancellation\n",
        policy_id.as_bytes(),
        b"\n",
        source.as_bytes(),
        b"\n",
        event_id.as_bytes(),
    ])
}

/// Deterministic id of a request to the policy stage: the same webhook asks the same
/// thing with the same id, however often it is decided again.
pub fn request_id(kind: PolicyRequestKind, policy_id: &str, source: &str, payment_id: &str, event_id: &str) -> String {
    let kind: &[u8] = match kind {
        PolicyRequestKind::Activate => b"request:activate\n",
        PolicyRequestKind::Cancel => b"request:cancel\n",
    };
    sha256_hex(&[
        kind,
        policy_id.as_bytes(),
        b"\n",
        source.as_bytes(),
        b"\n",
        payment_id.as_bytes(),
        b"\n",
        event_id.as_bytes(),
    ])
}

/// Deterministic id of the notice that a payment duplicates the policy's holder.
pub fn duplicate_id(
    policy_id: &str,
    holder_activation_id: &str,
    source: &str,
    payment_id: &str,
    event_id: &str,
) -> String {
    sha256_hex(&[
        b"duplicate\n",
        policy_id.as_bytes(),
        b"\n",
        holder_activation_id.as_bytes(),
        b"\n",
        source.as_bytes(),
        b"\n",
        payment_id.as_bytes(),
        b"\n",
        event_id.as_bytes(),
    ])
}

/// A dead letter for `record`, with a deterministic id from its origin and reason.
pub fn dead_letter(
    record: &RawRecord,
    reason: DeadLetterReason,
    detail: String,
    event: Option<(&str, &str)>,
    payment_id: Option<&str>,
    missing: Vec<SequenceRange>,
) -> Output {
    let o = &record.origin;
    let id = sha256_hex(&[
        o.topic.as_bytes(),
        b"/",
        o.partition.to_string().as_bytes(),
        b"/",
        o.offset.to_string().as_bytes(),
        b"/",
        reason.as_str().as_bytes(),
    ]);
    Output::Dead(DeadLetter {
        dead_letter_id: id,
        reason,
        detail,
        origin_topic: o.topic.clone(),
        origin_partition: o.partition,
        origin_offset: o.offset,
        origin_timestamp: o.timestamp_ms,
        source: event.map(|e| e.0.to_owned()),
        event_id: event.map(|e| e.1.to_owned()),
        payment_id: payment_id.map(str::to_owned),
        missing_sequences: list_sequences(&missing),
        missing_ranges: missing,
        original_key: record.key.clone(),
        original_value: record.value.clone(),
        original_headers: record.headers.clone(),
    })
}
