//! Every refusal of ingest's status table, each with its status and JSON error, and
//! none of them published.

use std::time::Duration;

use hookstream_tests::broker::Broker;
use hookstream_tests::http::{get, post, request};
use hookstream_tests::ingest::start;
use hookstream_tests::{kafka, sign};
use http::Method;

use super::{raw_topic, signed};

/// 403: a tampered body (every scheme), stale and future timestamps (30 s beyond the
/// 300 s tolerance, so clock ticks during the test do not matter), a secret that is not
/// configured.
async fn assert_the_signature_rejections(addr: &str, body: &[u8], now: i64) {
    let body = body.to_vec();
    for source in ["paymenthub", "standard", "stripe", "github"] {
        let h = signed(source, 0, "evt_r", now, &body);
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        let r = post(addr, &format!("/webhooks/{source}"), &h, tampered).await;
        assert_eq!(
            (r.status.as_u16(), r.json()["error"].clone()),
            (403, "signature_mismatch".into()),
            "{source}"
        );
    }
    for source in ["paymenthub", "standard", "stripe"] {
        for ts in [now - 330, now + 330] {
            let r = post(
                addr,
                &format!("/webhooks/{source}"),
                &signed(source, 0, "evt_r", ts, &body),
                body.clone(),
            )
            .await;
            assert_eq!(
                (r.status.as_u16(), r.json()["error"].clone()),
                (403, "timestamp_out_of_tolerance".into()),
                "{source} {ts}"
            );
        }
    }
    let h = sign::sign("hmac-sha256", "not-the-secret", "evt_r", now, &body);
    assert_eq!(post(addr, "/webhooks/paymenthub", &h, body.clone()).await.status, 403);
}

/// 400: a missing header names it; signed but not JSON; signed but without payment_id;
/// without an event id (stripe).
async fn assert_the_shape_rejections(addr: &str, body: &[u8], now: i64) {
    let body = body.to_vec();
    let h: Vec<_> = signed("paymenthub", 0, "evt_r", now, &body)
        .into_iter()
        .filter(|(k, _)| k != "x-timestamp")
        .collect();
    let r = post(addr, "/webhooks/paymenthub", &h, body.clone()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "missing_header", "header": "x-timestamp"})
    );
    let not_json = b"payment completed".to_vec();
    let r = post(
        addr,
        "/webhooks/paymenthub",
        &signed("paymenthub", 0, "evt_r", now, &not_json),
        not_json,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (400, "invalid_json".into())
    );
    let no_pay = br#"{"id":"evt_r","type":"payment.created"}"#.to_vec();
    let r = post(
        addr,
        "/webhooks/paymenthub",
        &signed("paymenthub", 0, "evt_r", now, &no_pay),
        no_pay,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "missing_field", "field": "payment_id", "pointer": "/payment_id"})
    );
    let no_id = br#"{"payment_id":"pay_r"}"#.to_vec();
    let r = post(addr, "/webhooks/stripe", &signed("stripe", 0, "", now, &no_id), no_id).await;
    assert_eq!((r.status.as_u16(), r.json()["field"].clone()), (400, "event_id".into()));
}

/// 404: an unknown source, an unknown route; 405: GET/PUT on a webhook path, with
/// Allow: POST; 413: a body over the source's limit (64 KiB in the test config).
async fn assert_the_route_and_size_rejections(addr: &str, body: &[u8], now: i64) {
    let body = body.to_vec();
    let r = post(
        addr,
        "/webhooks/nosuch",
        &signed("paymenthub", 0, "evt_r", now, &body),
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "unknown_source", "source": "nosuch"})
    );
    assert_eq!(get(addr, "/nothing").await.status, 404);
    for m in [Method::GET, Method::PUT] {
        let r = request(addr, m, "/webhooks/paymenthub", &[], Vec::new()).await;
        assert_eq!(
            (r.status.as_u16(), r.json()["error"].clone()),
            (405, "method_not_allowed".into())
        );
        assert_eq!(r.headers["allow"], "POST");
    }
    let big = vec![b' '; 65_537];
    let r = post(
        addr,
        "/webhooks/paymenthub",
        &signed("paymenthub", 0, "evt_r", now, &big),
        big,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "payload_too_large", "limit_bytes": 65536})
    );
}

#[tokio::test]
async fn every_rejection_has_its_status_and_json_error() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let addr = ingest.addr();
    let now = sign::now();
    let body = sign::payment_body("evt_r", "pay_r", Some(1), "payment.created", None);
    assert_the_signature_rejections(&addr, &body, now).await;
    assert_the_shape_rejections(&addr, &body, now).await;
    assert_the_route_and_size_rejections(&addr, &body, now).await;

    // None of the above reached Kafka.
    let records = kafka::read_records(broker.bootstrap(), &topic, 1, Duration::from_secs(3)).await;
    assert!(records.is_empty(), "a rejected request was published");
    let metrics = String::from_utf8_lossy(&get(&addr, "/metrics").await.body).into_owned();
    assert!(
        metrics.contains(r#"hookstream_ingest_rejections_total{reason="signature_mismatch",source="paymenthub"}"#),
        "{metrics}"
    );
    ingest.stop().await;
}
