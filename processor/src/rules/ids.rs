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

/// Hex SHA-256 of `tag` and `fields`, each field after a newline: ids never contain
/// control characters (input.rs checks), so no two field lists give the same bytes.
fn hash_fields(tag: &str, fields: &[&str]) -> String {
    let mut parts: Vec<&[u8]> = vec![tag.as_bytes()];
    for f in fields {
        parts.push(b"\n");
        parts.push(f.as_bytes());
    }
    sha256_hex(&parts)
}

/// Deterministic activation id: the same completed event for the same policy always
/// gives the same id.
pub fn activation_id(policy_id: &str, source: &str, event_id: &str) -> String {
    hash_fields("activation", &[policy_id, source, event_id])
}

pub fn cancellation_id(policy_id: &str, source: &str, event_id: &str) -> String {
    hash_fields("cancellation", &[policy_id, source, event_id])
}

/// Deterministic id of a request to the policy stage: the same webhook asks the same
/// thing with the same id, however often it is decided again.
pub fn request_id(kind: PolicyRequestKind, policy_id: &str, source: &str, payment_id: &str, event_id: &str) -> String {
    let tag = match kind {
        PolicyRequestKind::Activate => "request:activate",
        PolicyRequestKind::Cancel => "request:cancel",
    };
    hash_fields(tag, &[policy_id, source, payment_id, event_id])
}

/// Deterministic id of the notice that a payment duplicates the policy's holder.
pub fn duplicate_id(
    policy_id: &str,
    holder_activation_id: &str,
    source: &str,
    payment_id: &str,
    event_id: &str,
) -> String {
    hash_fields(
        "duplicate",
        &[policy_id, holder_activation_id, source, payment_id, event_id],
    )
}

/// The longest `detail` a dead letter carries: it quotes input (an unknown event type, a
/// control record's kind), which is bounded only by the record's size.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// `detail` cut to [`MAX_DETAIL_BYTES`] at a character boundary, saying how much more
/// there was.
fn bounded_detail(mut detail: String) -> String {
    if detail.len() <= MAX_DETAIL_BYTES {
        return detail;
    }
    let total = detail.len();
    let mut cut = MAX_DETAIL_BYTES - 40;
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    detail.truncate(cut);
    detail.push_str(&format!("… ({} bytes more)", total - cut));
    detail
}

/// The dead letter chain a re-driven record continues
/// ([`hookstream_schemas::topics::headers::REDRIVE_OF`]).
pub fn redrive_of(record: &RawRecord) -> Option<&[u8]> {
    record
        .headers
        .iter()
        .rfind(|h| h.name == hookstream_schemas::topics::headers::REDRIVE_OF)
        .and_then(|h| h.value.as_deref())
}

/// A dead letter for `record`, with a deterministic id from its origin and reason; for a
/// re-driven record, from the chain it continues and the reason instead, so that a
/// letter re-driven and refused again, however often, is one letter.
pub fn dead_letter(
    record: &RawRecord,
    reason: DeadLetterReason,
    detail: String,
    event: Option<(&str, &str)>,
    payment_id: Option<&str>,
    missing: Vec<SequenceRange>,
) -> Output {
    let o = &record.origin;
    let id = match redrive_of(record) {
        Some(root) => sha256_hex(&[b"redriven/", root, b"/", reason.as_str().as_bytes()]),
        None => sha256_hex(&[
            o.topic.as_bytes(),
            b"/",
            o.partition.to_string().as_bytes(),
            b"/",
            o.offset.to_string().as_bytes(),
            b"/",
            reason.as_str().as_bytes(),
        ]),
    };
    Output::Dead(DeadLetter {
        dead_letter_id: id,
        reason,
        detail: bounded_detail(detail),
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
