//! How long a payment's and a policy's state is kept, in the partition's record time
//! ([`crate::rules::clock`]): a fold of the log like every other decision, so a replay
//! forgets the same states at the same records.
//!
//! - A payment that may still have to cancel an activation (it asked for one, and no
//!   refund has asked to cancel it) is kept for the refund window after its last event:
//!   a refund must find it.
//! - Any other payment is kept for the dedup window after its last event: long enough
//!   for a provider's retries, which are decided against it.
//! - A payment holding out-of-order events is kept until the gap is resolved.
//! - A policy with a holder is kept: its state is what keeps a second payment from
//!   activating it again. A policy with no holder is kept for the refund window after
//!   its last request.
//!
//! A state past its time is forgotten by the fold at once ([`is_expired`]); the store
//! removes it (and logs a tombstone) afterwards, in bounded steps.

use std::time::Duration;

use crate::rules::model::PaymentState;
use crate::rules::policy::PolicyState;

/// The two windows, in ms of record time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub dedup_window_ms: i64,
    pub refund_window_ms: i64,
}

impl Retention {
    pub fn new(dedup_window: Duration, refund_window: Duration) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            dedup_window_ms: ms(dedup_window),
            refund_window_ms: ms(refund_window),
        }
    }
}

/// Whether a state that expires at `evict_at_ms` is past it at the clock `now_ms`.
pub fn is_expired(evict_at_ms: Option<i64>, now_ms: i64) -> bool {
    evict_at_ms.is_some_and(|at| at <= now_ms)
}

/// Stamp a payment changed at the clock `now_ms` with when it expires.
pub fn stamp_payment(st: &mut PaymentState, now_ms: i64, r: &Retention) {
    st.last_event_ms = now_ms;
    st.evict_at_ms = if !st.held.is_empty() {
        None
    } else if st.activation.is_some() && st.cancellation_id.is_none() {
        Some(now_ms.saturating_add(r.refund_window_ms))
    } else {
        Some(now_ms.saturating_add(r.dedup_window_ms))
    };
}

/// Stamp a policy changed at the clock `now_ms` with when it expires.
pub fn stamp_policy(st: &mut PolicyState, now_ms: i64, r: &Retention) {
    st.last_request_ms = now_ms;
    st.evict_at_ms = match st.holder() {
        Some(_) => None,
        None => Some(now_ms.saturating_add(r.refund_window_ms)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::Activation;

    const R: Retention = Retention {
        dedup_window_ms: 10,
        refund_window_ms: 1_000,
    };

    #[test]
    fn a_payment_that_may_still_cancel_is_kept_for_the_refund_window_and_others_for_the_dedup_window() {
        let mut st = PaymentState::new("src", "pay");
        stamp_payment(&mut st, 100, &R);
        assert_eq!(st.evict_at_ms, Some(110));
        st.activation = Some(Activation {
            activation_id: "a".into(),
            policy_id: "pol".into(),
            event_id: "e".into(),
        });
        stamp_payment(&mut st, 200, &R);
        assert_eq!(st.evict_at_ms, Some(1_200));
        st.cancellation_id = Some("c".into());
        stamp_payment(&mut st, 300, &R);
        assert_eq!(st.evict_at_ms, Some(310));
        assert!(!is_expired(st.evict_at_ms, 309));
        assert!(is_expired(st.evict_at_ms, 310));
    }

    #[test]
    fn a_policy_with_a_holder_is_never_expired() {
        let mut st = PolicyState::new("pol");
        stamp_policy(&mut st, 5, &R);
        assert_eq!(st.evict_at_ms, Some(1_005));
    }
}
