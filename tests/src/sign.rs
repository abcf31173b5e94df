//! Request signing for the four schemes, written independently of ingest's verifier
//! (from the schemes' specifications), so tests and loadgen check ingest against a
//! second implementation rather than against itself.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// The headers that sign `body` for `scheme` with `secret` at unix time `ts`.
/// `event_id` goes into the scheme's id header (ignored by stripe, which has none).
pub fn sign(scheme: &str, secret: &str, event_id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    let signed_ts = |b: &[u8]| [ts.to_string().as_bytes(), b".", b].concat();
    match scheme {
        "hmac-sha256" => vec![
            ("x-event-id".into(), event_id.into()),
            ("x-timestamp".into(), ts.to_string()),
            (
                "x-signature".into(),
                format!("sha256={}", hex::encode(mac(secret.as_bytes(), &signed_ts(body)))),
            ),
        ],
        "standard-webhooks" => {
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.trim_start_matches("whsec_"))
                .expect("standard-webhooks secret is whsec_<base64>");
            let msg = [event_id.as_bytes(), b".", &signed_ts(body)].concat();
            let sig = base64::engine::general_purpose::STANDARD.encode(mac(&key, &msg));
            vec![
                ("webhook-id".into(), event_id.into()),
                ("webhook-timestamp".into(), ts.to_string()),
                ("webhook-signature".into(), format!("v1,{sig}")),
            ]
        }
        "stripe" => vec![(
            "stripe-signature".into(),
            format!("t={ts},v1={}", hex::encode(mac(secret.as_bytes(), &signed_ts(body)))),
        )],
        "github" => vec![
            ("x-github-delivery".into(), event_id.into()),
            (
                "x-hub-signature-256".into(),
                format!("sha256={}", hex::encode(mac(secret.as_bytes(), body))),
            ),
        ],
        other => panic!("unknown scheme {other}"),
    }
}

/// Current unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A canonical payment event body (DESIGN.md's default field mapping).
pub fn payment_body(
    event_id: &str,
    payment_id: &str,
    sequence: Option<i64>,
    ty: &str,
    policy_id: Option<&str>,
) -> Vec<u8> {
    let mut v = serde_json::json!({
        "id": event_id, "payment_id": payment_id, "type": ty,
        "amount": 5000, "currency": "KES", "occurred_at": "2026-02-12T10:00:00Z",
        "metadata": {}
    });
    if let Some(s) = sequence {
        v["sequence"] = s.into();
    }
    if let Some(p) = policy_id {
        v["metadata"]["policy_id"] = p.into();
    }
    serde_json::to_vec(&v).expect("json")
}

/// Send one event through ingest's `paymenthub` source (signed with its first secret);
/// panics unless the answer is 200.
pub async fn send_event(addr: &str, event_id: &str, payment: &str, seq: Option<i64>, ty: &str, policy: Option<&str>) {
    send_body(addr, event_id, payment_body(event_id, payment, seq, ty, policy)).await;
}

/// Send `body` as event `event_id` through ingest's `paymenthub` source; panics unless 200.
pub async fn send_body(addr: &str, event_id: &str, body: Vec<u8>) {
    send_body_from(addr, "paymenthub", event_id, body).await;
}

/// Send `body` as event `event_id` through ingest's `source`, signed with its first
/// secret in its scheme; panics unless 200.
pub async fn send_body_from(addr: &str, source: &str, event_id: &str, body: Vec<u8>) {
    let secret = crate::ingest::secrets_of(source)[0];
    let h = sign(crate::ingest::scheme_of(source), secret, event_id, now(), &body);
    let r = crate::http::post(addr, &format!("/webhooks/{source}"), &h, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Send `payments` lifecycles (created, processing, completed; each paying for policy
/// `pol_{prefix}{i}`) through ingest's `paymenthub` source, every payment's events in
/// order, `parallel` payments at a time with `pause` between groups, so a stream lasts
/// long enough for a test to break something in the middle of it. Panics on a non-200.
pub fn paced_lifecycles(
    addr: String,
    prefix: &'static str,
    payments: usize,
    parallel: usize,
    pause: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let (scheme, secret) = (
        crate::ingest::scheme_of("paymenthub"),
        crate::ingest::secrets_of("paymenthub")[0],
    );
    tokio::spawn(async move {
        for chunk in (0..payments).collect::<Vec<_>>().chunks(parallel.max(1)) {
            let mut tasks = Vec::new();
            for &i in chunk {
                let addr = addr.clone();
                tasks.push(tokio::spawn(async move {
                    for (seq, ty) in [
                        (1, "payment.created"),
                        (2, "payment.processing"),
                        (3, "payment.completed"),
                    ] {
                        let id = format!("evt_{prefix}{i}_{seq}");
                        let pol = format!("pol_{prefix}{i}");
                        let body = payment_body(&id, &format!("pay_{prefix}{i}"), Some(seq), ty, Some(&pol));
                        let h = sign(scheme, secret, &id, now(), &body);
                        let r = crate::http::post(&addr, "/webhooks/paymenthub", &h, body).await;
                        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    }
                }));
            }
            for t in tasks {
                t.await.expect("sender task");
            }
            tokio::time::sleep(pause).await;
        }
    })
}
