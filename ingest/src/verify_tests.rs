use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

const SW1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW2_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn standard(id: &str, ts: &str, sig: &str) -> HeaderMap {
    headers(&[
        ("webhook-id", id),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
    ])
}

#[test]
fn standard_webhooks_vector_1() {
    let s = Secrets::from_env_value(Scheme::StandardWebhooks, SW1_SECRET).unwrap();
    let h = standard(
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    );
    let v = verify(
        Scheme::StandardWebhooks,
        &h,
        br#"{"test": 2432232314}"#,
        &s,
        1614265330,
        300,
    )
    .unwrap();
    assert_eq!(
        v,
        Verified {
            event_id: HeaderId::Signed("msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            secret_index: 0
        }
    );
}

#[test]
fn standard_webhooks_vector_2_and_its_wrong_signature() {
    let s = Secrets::from_env_value(Scheme::StandardWebhooks, SW2_SECRET).unwrap();
    let body = br#"{"email":"test@example.com","username":"test_user"}"#;
    let id = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    let good = standard(id, "1649367553", "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    assert!(verify(Scheme::StandardWebhooks, &good, body, &s, 1649367553, 300).is_ok());
    let bad = standard(id, "1649367553", "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=");
    assert_eq!(
        verify(Scheme::StandardWebhooks, &bad, body, &s, 1649367553, 300),
        Err(Rejection::SignatureMismatch)
    );
    // Several signatures separated by spaces: one valid is enough.
    let several = standard(
        id,
        "1649367553",
        "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU= v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
    );
    assert!(verify(Scheme::StandardWebhooks, &several, body, &s, 1649367553, 300).is_ok());
}

#[test]
fn github_vector() {
    // The documented secret contains spaces: such a secret comes from a file, one per line.
    let secrets = Secrets::from_file_text(Scheme::Github, "It's a Secret to Everybody\n").unwrap();
    assert_eq!(secrets.len(), 1);
    let h = headers(&[
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        (
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ),
    ]);
    let v = verify(Scheme::Github, &h, b"Hello, World!", &secrets, 0, 300).unwrap();
    assert_eq!(
        v.event_id,
        HeaderId::Unsigned("72d3162e-cc78-11e3-81ab-4c9367dc0958".into())
    );
}

#[test]
fn hmac_sha256_rotation_reports_which_secret_matched() {
    let s = Secrets::from_env_value(Scheme::HmacSha256, "old-secret new-secret").unwrap();
    let body = br#"{"id":"evt_1","payment_id":"pay_1"}"#;
    let sig = format!("sha256={}", hmac_hex(b"new-secret", &[b"1700000000", b".", body]));
    let h = headers(&[
        ("x-event-id", "evt_1"),
        ("x-timestamp", "1700000000"),
        ("x-signature", &sig),
    ]);
    let v = verify(Scheme::HmacSha256, &h, body, &s, 1700000100, 300).unwrap();
    assert_eq!(
        v,
        Verified {
            event_id: HeaderId::Unsigned("evt_1".into()),
            secret_index: 1
        }
    );
    let only_old = Secrets::from_env_value(Scheme::HmacSha256, "old-secret").unwrap();
    assert_eq!(
        verify(Scheme::HmacSha256, &h, body, &only_old, 1700000100, 300),
        Err(Rejection::SignatureMismatch)
    );
}

#[test]
fn timestamp_tolerance_applies_both_directions() {
    let s = Secrets::from_env_value(Scheme::HmacSha256, "k").unwrap();
    let body = b"{}";
    let sig = format!("sha256={}", hmac_hex(b"k", &[b"1000000", b".", body]));
    let h = headers(&[("x-event-id", "e"), ("x-timestamp", "1000000"), ("x-signature", &sig)]);
    for now in [1000000 - 300, 1000000, 1000000 + 300] {
        assert!(verify(Scheme::HmacSha256, &h, body, &s, now, 300).is_ok(), "now={now}");
    }
    for now in [1000000 - 301, 1000000 + 301] {
        assert_eq!(
            verify(Scheme::HmacSha256, &h, body, &s, now, 300),
            Err(Rejection::TimestampOutOfTolerance)
        );
    }
}

#[test]
fn stripe_accepts_any_v1_and_ignores_v0() {
    let s = Secrets::from_env_value(Scheme::Stripe, "whsec_test_secret").unwrap();
    let body = br#"{"id":"evt_s1"}"#;
    let good = hmac_hex(b"whsec_test_secret", &[b"1700000000", b".", body]);
    let v0_only = format!("t=1700000000,v0={good}");
    let h = headers(&[("stripe-signature", &v0_only)]);
    assert_eq!(
        verify(Scheme::Stripe, &h, body, &s, 1700000000, 300),
        Err(Rejection::SignatureMismatch)
    );
    let two = format!("t=1700000000,v1={},v1={good}", "ab".repeat(32));
    let h = headers(&[("stripe-signature", &two)]);
    assert_eq!(
        verify(Scheme::Stripe, &h, body, &s, 1700000000, 300).unwrap().event_id,
        HeaderId::None
    );
}

#[test]
fn secrets_are_never_printed() {
    let s = Secrets::from_env_value(Scheme::HmacSha256, "super-secret-value").unwrap();
    assert_eq!(format!("{s:?}"), "Secrets([redacted; 1])");
    let e = Secrets::from_env_value(Scheme::StandardWebhooks, "whsec_!!notbase64").unwrap_err();
    assert_eq!(e, SecretError::NotBase64 { index: 0 });
    assert!(!e.to_string().contains("notbase64"), "{e}");
    assert_eq!(
        Secrets::from_env_value(Scheme::HmacSha256, "  ").err(),
        Some(SecretError::NoneGiven)
    );
}

/// A valid (scheme, headers, body) triple with `ts`, for mutation by the properties below.
fn signed(scheme: Scheme, body: &[u8], ts: i64) -> (Secrets, Vec<(String, String)>) {
    let ts_s = ts.to_string();
    match scheme {
        Scheme::HmacSha256 => (
            Secrets::from_env_value(scheme, "prop-secret").unwrap(),
            vec![
                ("x-event-id".into(), "evt_p".into()),
                ("x-timestamp".into(), ts_s.clone()),
                (
                    "x-signature".into(),
                    format!("sha256={}", hmac_hex(b"prop-secret", &[ts_s.as_bytes(), b".", body])),
                ),
            ],
        ),
        Scheme::StandardWebhooks => {
            let mut mac = HmacSha256::new_from_slice(b"0123456789abcdef").unwrap();
            for p in [b"msg_p".as_slice(), b".", ts_s.as_bytes(), b".", body] {
                mac.update(p);
            }
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            let secret = format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef")
            );
            (
                Secrets::from_env_value(scheme, &secret).unwrap(),
                vec![
                    ("webhook-id".into(), "msg_p".into()),
                    ("webhook-timestamp".into(), ts_s),
                    ("webhook-signature".into(), format!("v1,{sig}")),
                ],
            )
        }
        Scheme::Stripe => {
            let sig = hmac_hex(b"whsec_p", &[ts_s.as_bytes(), b".", body]);
            (
                Secrets::from_env_value(scheme, "whsec_p").unwrap(),
                vec![("stripe-signature".into(), format!("t={ts_s},v1={sig}"))],
            )
        }
        Scheme::Github => (
            Secrets::from_env_value(scheme, "gh-secret").unwrap(),
            vec![
                ("x-github-delivery".into(), "d-1".into()),
                (
                    "x-hub-signature-256".into(),
                    format!("sha256={}", hmac_hex(b"gh-secret", &[body])),
                ),
            ],
        ),
    }
}

fn to_map(pairs: &[(String, String)]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        );
    }
    Some(h)
}

fn any_scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![
        Just(Scheme::HmacSha256),
        Just(Scheme::StandardWebhooks),
        Just(Scheme::Stripe),
        Just(Scheme::Github)
    ]
}

const NOW: i64 = 1_770_000_000;

proptest! {
    #[test]
    fn untouched_requests_verify(scheme in any_scheme(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (secrets, h) = signed(scheme, &body, NOW);
        prop_assert!(verify(scheme, &to_map(&h).unwrap(), &body, &secrets, NOW, 300).is_ok());
    }

    #[test]
    fn any_single_byte_change_to_the_body_is_rejected(
        scheme in any_scheme(),
        body in proptest::collection::vec(any::<u8>(), 1..300),
        pos in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let (secrets, h) = signed(scheme, &body, NOW);
        let mut tampered = body.clone();
        let i = pos.index(tampered.len());
        tampered[i] = tampered[i].wrapping_add(delta);
        prop_assert_eq!(verify(scheme, &to_map(&h).unwrap(), &tampered, &secrets, NOW, 300), Err(Rejection::SignatureMismatch));
    }

    #[test]
    fn any_single_byte_change_to_a_signed_header_is_rejected(
        scheme in any_scheme(),
        body in proptest::collection::vec(any::<u8>(), 0..100),
        which in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let (secrets, mut h) = signed(scheme, &body, NOW);
        // The timestamp and signature headers (every header but the event id).
        let signed_idx: Vec<usize> = (0..h.len()).filter(|&i| !h[i].0.ends_with("-id") && h[i].0 != "x-github-delivery").collect();
        let hi = signed_idx[which.index(signed_idx.len())];
        let mut bytes = h[hi].1.clone().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        // A change that makes the header unrepresentable is rejected by HTTP itself.
        let Ok(v) = String::from_utf8(bytes) else { return Ok(()) };
        h[hi].1 = v;
        let Some(map) = to_map(&h) else { return Ok(()) };
        prop_assert!(verify(scheme, &map, &body, &secrets, NOW, 300).is_err(), "{:?} accepted", h[hi]);
    }
}
