//! What replaces an output the broker refused for good (a pure function).
//!
//! A permanent refusal (too large, invalid) must not halt the partition
//! by being retried forever. The output is replaced by a dead letter that is smaller
//! each time: first a `processing_error` letter carrying the raw record that caused the
//! output (so it can be re-driven once the cause is fixed), then a letter with the
//! original's coordinates only (topic, partition, offset), which an operator can read
//! the record back from. Each substitute is a function of the output and its cause, so
//! a replay that meets the same refusal writes the same letter with the same id.

use hookstream_schemas::{DeadLetter, DeadLetterReason};

use crate::rules::decide::dead_letter;
use crate::rules::input::MAX_ID_BYTES;
use crate::rules::model::{Output, RawRecord};

/// Longest `detail` in a coordinates-only letter.
use crate::rules::ids::MAX_DETAIL_BYTES;

/// At most `max` bytes of `s`, on a char boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `d` already is a coordinates-only letter: nothing left to leave out.
fn is_minimal(d: &DeadLetter) -> bool {
    d.original_value.is_none() && d.original_headers.is_empty() && d.detail.len() <= MAX_DETAIL_BYTES + 200
}

/// The (source, event id, payment id) an output is about.
fn about(output: &Output) -> Option<(&str, &str, &str)> {
    use hookstream_schemas::PolicyEventKind as K;
    Some(match output {
        Output::Request(r) => (&r.source, &r.payment_event_id, &r.payment_id),
        Output::Policy(p) => match &p.event {
            K::Activated(a) => (&a.source, &a.payment_event_id, &a.payment_id),
            K::Cancelled(c) => (&c.source, &c.payment_event_id, &c.payment_id),
            K::Duplicated(d) => (&d.source, &d.payment_event_id, &d.payment_id),
        },
        Output::Dead(_) => return None,
    })
}

/// The letter that replaces `output`, refused for good with `error`; `None` when it is
/// already as small as a letter gets (then the DLQ itself refuses it: an operator's
/// problem, and the caller pauses the partition instead).
pub fn substitute(output: &Output, cause: &RawRecord, error: &str) -> Option<Output> {
    let refused = |what: &str, policy_id: &str| {
        format!(
            "the broker refused the {what} output for policy {:?} for good ({}); the record that caused it is \
             dead-lettered instead",
            cut(policy_id, 64),
            cut(error, 256)
        )
    };
    let detail = match output {
        Output::Policy(p) => {
            let what = match p.event {
                hookstream_schemas::PolicyEventKind::Activated(_) => "activation",
                hookstream_schemas::PolicyEventKind::Cancelled(_) => "cancellation",
                hookstream_schemas::PolicyEventKind::Duplicated(_) => "duplicate payment",
            };
            Some(refused(what, &p.policy_id))
        }
        Output::Request(r) => Some(refused("policy request", &r.policy_id)),
        Output::Dead(_) => None,
    };
    match output {
        Output::Policy(_) | Output::Request(_) => {
            let detail = detail.unwrap_or_default();
            // The payment the output is about: the cause's key is the policy id in the
            // policy stage, so the output names it.
            let (source, event_id, payment_id) = about(output)?;
            let (source, event_id) = (cut(source, MAX_ID_BYTES), cut(event_id, MAX_ID_BYTES));
            dead_letter(
                cause,
                DeadLetterReason::ProcessingError,
                detail,
                Some((source, event_id)),
                Some(cut(payment_id, MAX_ID_BYTES)),
                vec![],
            )
            .into()
        }
        Output::Dead(d) if is_minimal(d) => None,
        Output::Dead(d) => {
            let mut d = d.clone();
            d.detail = format!(
                "{} (the letter was refused for good: {}; its original key, value and headers are left out: \
                 read them at {}/{}/{})",
                cut(&d.detail, MAX_DETAIL_BYTES / 2),
                cut(error, 200),
                d.origin_topic,
                d.origin_partition,
                d.origin_offset
            );
            let id = |v: &Option<String>| v.as_deref().map(|s| cut(s, MAX_ID_BYTES).to_owned());
            d.source = id(&d.source);
            d.event_id = id(&d.event_id);
            d.payment_id = id(&d.payment_id);
            d.original_key = d.original_key.filter(|k| k.len() <= MAX_ID_BYTES);
            d.original_value = None;
            d.original_headers.clear();
            d.missing_ranges.truncate(100);
            Some(Output::Dead(d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::Origin;
    use hookstream_schemas::{encode, PolicyActivated, PolicyEvent, PolicyEventKind};

    fn cause(value_len: usize) -> RawRecord {
        RawRecord {
            origin: Origin {
                topic: "raw".into(),
                partition: 2,
                offset: 40,
                timestamp_ms: 7,
            },
            // The policy stage's cause: a request keyed by its policy.
            key: Some(b"pol_1".to_vec()),
            value: Some(vec![1; value_len]),
            headers: vec![],
        }
    }

    #[test]
    fn a_refused_activation_becomes_a_letter_then_coordinates_then_nothing() {
        let huge = "p".repeat(500_000);
        let act = Output::Policy(PolicyEvent {
            policy_id: huge.clone(),
            event: PolicyEventKind::Activated(PolicyActivated {
                activation_id: "a".into(),
                policy_id: huge,
                payment_id: "pay_1".into(),
                source: "s".into(),
                payment_event_id: "e".into(),
                amount: None,
                currency: None,
                occurred_at: None,
                activated_at: 0,
            }),
        });
        let Some(Output::Dead(first)) = substitute(&act, &cause(900_000), "message too large") else {
            panic!("a letter")
        };
        assert_eq!(first.reason, DeadLetterReason::ProcessingError);
        assert_eq!(
            (
                first.source.as_deref(),
                first.event_id.as_deref(),
                first.payment_id.as_deref()
            ),
            (Some("s"), Some("e"), Some("pay_1")),
            "the payment the activation is about, not the cause's key (a policy id in the policy stage)"
        );
        assert_eq!(first.original_value.as_ref().map(Vec::len), Some(900_000));
        assert!(first.detail.len() < 1024, "{}", first.detail.len());
        let second = substitute(&Output::Dead(first.clone()), &cause(900_000), "too large").unwrap();
        let Output::Dead(d) = &second else { panic!("a letter") };
        assert_eq!((d.origin_partition, d.origin_offset), (2, 40));
        assert_eq!(
            d.dead_letter_id, first.dead_letter_id,
            "same record, same reason, same id"
        );
        assert!(encode(d).unwrap().len() < 4096);
        assert!(substitute(&second, &cause(900_000), "too large").is_none());
    }
}
