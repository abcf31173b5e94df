//! One fixed example of each record type: the golden samples in `schemas/testdata/`
//! are these values, and tests and docs use them as realistic fixtures.

use crate::{
    DeadLetter, DeadLetterReason, GapTimeout, HttpHeader, KafkaHeader, PolicyActivated, PolicyCancelled, PolicyEvent,
    PolicyEventKind, PolicyPaymentDuplicated, PolicyRequest, PolicyRequestKind, RawWebhook, SequenceRange,
};

const BODY: &str = r#"{"id":"evt_1001","payment_id":"pay_7Hq2","sequence":3,"type":"payment.completed","amount":5000,"currency":"KES","occurred_at":"2026-02-12T10:00:00Z","metadata":{"policy_id":"pol_88x"}}"#;

/// A verified `payment.completed` webhook from the `paymenthub` (hmac-sha256) source.
pub fn raw_webhook() -> RawWebhook {
    RawWebhook {
        event_id: "evt_1001".into(),
        source: "paymenthub".into(),
        scheme: "hmac-sha256".into(),
        secret_index: 1,
        payment_id: "pay_7Hq2".into(),
        event_type: Some("payment.completed".into()),
        sequence: Some(3),
        received_at: 1_770_890_400_123,
        headers: vec![
            HttpHeader {
                name: "x-event-id".into(),
                value: b"evt_1001".to_vec(),
            },
            HttpHeader {
                name: "x-timestamp".into(),
                value: b"1770890400".to_vec(),
            },
            HttpHeader {
                name: "x-signature".into(),
                value: b"sha256=5d41402abc4b2a76b9719d911017c592aa6dd8e6d2c6b1d1a5c1c2c3d4e5f601".to_vec(),
            },
        ],
        body: BODY.as_bytes().to_vec(),
    }
}

/// The activation that `raw_webhook()` causes.
pub fn policy_activated() -> PolicyEvent {
    PolicyEvent {
        policy_id: "pol_88x".into(),
        event: PolicyEventKind::Activated(PolicyActivated {
            activation_id: "3f1c8a0d9e2b4c6f8a1b3d5e7f9a0c2e4b6d8f0a1c3e5a7b9d1f3a5c7e9b0d2f".into(),
            policy_id: "pol_88x".into(),
            payment_id: "pay_7Hq2".into(),
            source: "paymenthub".into(),
            payment_event_id: "evt_1001".into(),
            amount: Some(5000),
            currency: Some("KES".into()),
            occurred_at: Some("2026-02-12T10:00:00Z".into()),
            activated_at: 1_770_890_400_123,
        }),
    }
}

/// A cancellation of the activation in `policy_activated()` after a refund.
pub fn policy_cancelled() -> PolicyEvent {
    PolicyEvent {
        policy_id: "pol_88x".into(),
        event: PolicyEventKind::Cancelled(PolicyCancelled {
            cancellation_id: "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1".into(),
            activation_id: "3f1c8a0d9e2b4c6f8a1b3d5e7f9a0c2e4b6d8f0a1c3e5a7b9d1f3a5c7e9b0d2f".into(),
            policy_id: "pol_88x".into(),
            payment_id: "pay_7Hq2".into(),
            source: "paymenthub".into(),
            payment_event_id: "evt_1002".into(),
            amount: None,
            currency: None,
            occurred_at: Some("2026-02-13T08:30:00Z".into()),
            cancelled_at: 1_770_971_400_000,
        }),
    }
}

/// A `sequence_gap_timeout` dead letter naming the missing sequences 2 and 3.
pub fn dead_letter() -> DeadLetter {
    DeadLetter {
        dead_letter_id: "9c4e2a1b7d3f5e8a0c6b4d2f1e3a5c7b9d0f2e4a6c8b1d3f5a7c9e0b2d4f6a8c".into(),
        reason: DeadLetterReason::SequenceGapTimeout,
        detail: "sequence gap open for 300 s: missing 2, 3; applying held 4".into(),
        origin_topic: "payments.webhooks.raw".into(),
        origin_partition: 7,
        origin_offset: 120_034,
        origin_timestamp: 1_770_890_700_500,
        source: Some("paymenthub".into()),
        event_id: None,
        payment_id: Some("pay_7Hq2".into()),
        missing_sequences: vec![2, 3],
        missing_ranges: vec![SequenceRange { first: 2, last: 3 }],
        original_key: Some(b"pay_7Hq2".to_vec()),
        original_value: Some(vec![0xC3, 0x01, 0x00, 0xFF, 0x10, 0x80]),
        original_headers: vec![
            KafkaHeader {
                name: "hookstream-control".into(),
                value: Some(b"gap-timeout".to_vec()),
            },
            KafkaHeader {
                name: "empty".into(),
                value: None,
            },
        ],
    }
}

/// The gap-timeout decision that `dead_letter()` reports.
pub fn gap_timeout() -> GapTimeout {
    GapTimeout {
        payment_id: "pay_7Hq2".into(),
        source: "paymenthub".into(),
        next_expected_sequence: 2,
        missing_sequences: vec![2, 3],
        gap_opened_at: 1_770_890_400_500,
        decided_at: 1_770_890_700_400,
    }
}

/// A second payment for the policy of `policy_activated()`, through another provider.
pub fn policy_duplicated() -> PolicyEvent {
    PolicyEvent {
        policy_id: "pol_88x".into(),
        event: PolicyEventKind::Duplicated(PolicyPaymentDuplicated {
            duplicate_id: "5e7a9c1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c".into(),
            policy_id: "pol_88x".into(),
            active_activation_id: "3f1c8a0d9e2b4c6f8a1b3d5e7f9a0c2e4b6d8f0a1c3e5a7b9d1f3a5c7e9b0d2f".into(),
            active_payment_id: "pay_7Hq2".into(),
            active_source: "paymenthub".into(),
            payment_id: "pi_3Nx".into(),
            source: "stripe".into(),
            payment_event_id: "evt_s_77".into(),
            amount: Some(5000),
            currency: Some("KES".into()),
            occurred_at: None,
            detected_at: 1_770_890_460_000,
        }),
    }
}

/// The request the payment stage sends for `raw_webhook()`.
pub fn policy_request() -> PolicyRequest {
    PolicyRequest {
        request_id: "7b9d1f3a5c7e9b0d2f3f1c8a0d9e2b4c6f8a1b3d5e7f9a0c2e4b6d8f0a1c3e5a".into(),
        kind: PolicyRequestKind::Activate,
        policy_id: "pol_88x".into(),
        activation_id: "3f1c8a0d9e2b4c6f8a1b3d5e7f9a0c2e4b6d8f0a1c3e5a7b9d1f3a5c7e9b0d2f".into(),
        source: "paymenthub".into(),
        payment_id: "pay_7Hq2".into(),
        payment_event_id: "evt_1001".into(),
        amount: Some(5000),
        currency: Some("KES".into()),
        occurred_at: Some("2026-02-12T10:00:00Z".into()),
        received_at: 1_770_890_400_123,
    }
}
