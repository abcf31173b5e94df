//! Bounds on what one payment's webhooks may make the processor hold, and the sequence
//! arithmetic that respects them (pure: no I/O, no clock).
//!
//! A provider decides the sequence numbers, so they are hostile input: one webhook with
//! `"sequence": 1000000000000` must not make the processor enumerate a trillion missing
//! numbers, and a payment must not hold an unbounded number of out-of-order events.
//! Missing sequences are kept as ranges, whose count is bounded by the held events.

use std::collections::BTreeMap;

use hookstream_schemas::SequenceRange;

use crate::rules::model::HeldEvent;

/// The per-payment bounds `decide` enforces; beyond them a webhook is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How far ahead of the next expected sequence an event may be held.
    pub max_sequence_ahead: i64,
    /// Out-of-order events held per payment.
    pub max_held_events: usize,
    /// Raw record bytes (key and value) held per payment.
    pub max_held_bytes: usize,
    /// Payments one policy's state remembers (holder, duplicates, refunded); a request
    /// from one more is dead-lettered, so a provider cannot grow a policy without bound.
    pub max_payments_per_policy: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sequence_ahead: 1000,
            max_held_events: 100,
            max_held_bytes: 2 << 20,
            max_payments_per_policy: 100,
        }
    }
}

/// The size a held event counts for: its raw record's key and value.
pub fn held_size(h: &HeldEvent) -> usize {
    h.record.key.as_ref().map_or(0, Vec::len) + h.record.value.as_ref().map_or(0, Vec::len)
}

/// Every sequence missing between `next` and the last held one, as inclusive ranges: at
/// most one range per held event, however large the gaps.
pub fn missing_ranges(next: i64, held: &BTreeMap<i64, HeldEvent>) -> Vec<SequenceRange> {
    let mut out = Vec::new();
    let mut expect = next;
    for &seq in held.keys() {
        if seq > expect {
            out.push(SequenceRange {
                first: expect,
                last: seq - 1,
            });
        }
        expect = expect.max(seq.saturating_add(1));
    }
    out
}

/// How many sequence numbers the ranges cover (saturating).
pub fn count(ranges: &[SequenceRange]) -> i64 {
    ranges.iter().fold(0i64, |n, r| {
        n.saturating_add(r.last.saturating_sub(r.first).saturating_add(1))
    })
}

/// `ranges` for a log line or a detail text: at most 10 ranges, then how many more.
pub fn describe(ranges: &[SequenceRange]) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(10)
        .map(|r| {
            if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            }
        })
        .collect();
    if ranges.len() > 10 {
        parts.push(format!("and {} more ranges", ranges.len() - 10));
    }
    format!("[{}] ({} sequence numbers)", parts.join(", "), count(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::{EventType, Origin, RawRecord, WebhookEvent};

    fn held(seqs: &[i64]) -> BTreeMap<i64, HeldEvent> {
        seqs.iter()
            .map(|&s| {
                let event = WebhookEvent {
                    source: "s".into(),
                    event_id: format!("e{s}"),
                    payment_id: "p".into(),
                    sequence: Some(s),
                    event_type: EventType::Processing,
                    policy_id: None,
                    amount: None,
                    currency: None,
                    occurred_at: None,
                    received_at: 0,
                    body_hash: String::new(),
                };
                let record = RawRecord {
                    origin: Origin {
                        topic: "t".into(),
                        partition: 0,
                        offset: s,
                        timestamp_ms: 0,
                    },
                    key: Some(b"p".to_vec()),
                    value: Some(vec![0; 9]),
                    headers: vec![],
                };
                (s, HeldEvent { event, record })
            })
            .collect()
    }

    #[test]
    fn missing_sequences_are_ranges_whatever_the_gap() {
        let r = missing_ranges(2, &held(&[5, 6, 1_000_000_000_000, i64::MAX]));
        let pairs: Vec<(i64, i64)> = r.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(
            pairs,
            vec![(2, 4), (7, 999_999_999_999), (1_000_000_000_001, i64::MAX - 1)]
        );
        assert_eq!(count(&r), 3 + 999_999_999_993 + (i64::MAX - 1 - 1_000_000_000_000));
        assert!(describe(&r).starts_with("[2-4, 7-999999999999, "));
        assert_eq!(hookstream_schemas::list_sequences(&r).len(), 100);
        assert!(missing_ranges(1, &held(&[])).is_empty());
        assert_eq!(held_size(&held(&[3])[&3]), 10);
    }
}
