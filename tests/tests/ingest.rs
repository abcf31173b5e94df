//! ingest against the real broker: every row of the status table, every scheme,
//! rotation, and "broker stopped → 503, never 200". Requests are signed by the tests'
//! own signer (`hookstream_tests::sign`), not by ingest's verifier.

use std::time::Duration;

use hookstream_schemas::{decode, topics::headers, RawWebhook};
use hookstream_tests::broker::Broker;
use hookstream_tests::http::{get, post};
use hookstream_tests::ingest::{scheme_of, secrets_of, start};
use hookstream_tests::{kafka, sign};
use rdkafka::message::{Headers, Message};

mod availability;
mod rejections;

async fn raw_topic(broker: &Broker) -> String {
    let topic = kafka::unique_topic("ingest.raw");
    kafka::create_topic(broker.bootstrap(), &topic, 4).await;
    topic
}

/// A signed `payment.created` for `pay_1` with event id `id` through `paymenthub`.
async fn send_created(addr: String, id: String) -> hookstream_tests::http::Reply {
    let body = sign::payment_body(&id, "pay_1", None, "payment.created", None);
    post(
        &addr,
        "/webhooks/paymenthub",
        &signed("paymenthub", 0, &id, sign::now(), &body),
        body,
    )
    .await
}

/// The precondition "a healthy broker accepts a webhook": a broker that just started
/// may still be electing a new topic's leaders while a short ack deadline runs out, so
/// it gets tries (new event ids) for 30 s.
async fn accepted_once(addr: &str, prefix: &str) {
    let tries = async {
        for i in 0.. {
            if send_created(addr.to_owned(), format!("{prefix}_{i}")).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), tries)
        .await
        .expect("a healthy broker first: no 200 within 30 s");
}

/// Headers for a valid request from `source`, signed with its `secret_index`-th secret.
fn signed(source: &str, secret_index: usize, event_id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    sign::sign(scheme_of(source), secrets_of(source)[secret_index], event_id, ts, body)
}

#[tokio::test]
async fn every_scheme_is_accepted_and_the_record_is_exactly_what_was_sent() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let mut sent = Vec::new();
    for (i, source) in ["paymenthub", "standard", "stripe", "github"].into_iter().enumerate() {
        let event_id = format!("evt_{source}_{i}");
        let payment_id = format!("pay_{source}");
        let body = sign::payment_body(&event_id, &payment_id, Some(1), "payment.created", Some("pol_1"));
        let mut h = signed(source, 0, &event_id, sign::now(), &body);
        h.push((
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ));
        let reply = post(&ingest.addr(), &format!("/webhooks/{source}"), &h, body.clone()).await;
        assert_eq!(reply.status, 200, "{source}: {}", String::from_utf8_lossy(&reply.body));
        let j = reply.json();
        assert_eq!(j["received"], true);
        assert_eq!(
            j["event_id"],
            event_id.as_str(),
            "{source}: id from the scheme's header, or the body for stripe"
        );
        sent.push((
            source,
            event_id,
            payment_id,
            body,
            j["partition"].as_i64().unwrap(),
            j["offset"].as_i64().unwrap(),
        ));
    }
    let records = kafka::read_records(broker.bootstrap(), &topic, sent.len(), Duration::from_secs(20)).await;
    assert_eq!(records.len(), sent.len());
    for (source, event_id, payment_id, body, partition, offset) in sent {
        let m = records
            .iter()
            .find(|m| i64::from(m.partition()) == partition && m.offset() == offset)
            .unwrap_or_else(|| panic!("{source}: no record at the partition/offset the 200 named"));
        assert_eq!(kafka::key_str(m), payment_id, "key = payment_id");
        let raw: RawWebhook = decode(m.payload().unwrap()).unwrap();
        assert_eq!(raw.body, body, "{source}: raw body bytes untouched");
        assert_eq!(
            (raw.source.as_str(), raw.event_id.as_str(), raw.payment_id.as_str()),
            (source, event_id.as_str(), payment_id.as_str())
        );
        assert_eq!(raw.scheme, scheme_of(source));
        assert_eq!(
            (raw.sequence, raw.event_type.as_deref(), raw.secret_index),
            (Some(1), Some("payment.created"), 0)
        );
        assert!(
            !raw.headers.is_empty(),
            "{source}: signature headers kept for re-verification"
        );
        let hdr = |k: &str| {
            m.headers()
                .unwrap()
                .iter()
                .find(|h| h.key == k)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(hdr(headers::EVENT_ID).as_deref(), Some(event_id.as_str()));
        assert_eq!(hdr(headers::SOURCE).as_deref(), Some(source));
        let tp = hdr(headers::TRACEPARENT).unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "trace continued from the request: {tp}"
        );
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "a new span id for ingest's span: {tp}"
        );
    }
    ingest.stop().await;
}

#[tokio::test]
async fn rotated_secret_is_accepted_and_recorded_by_position() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let body = sign::payment_body("evt_rot", "pay_rot", None, "payment.created", None);
    let reply = post(
        &ingest.addr(),
        "/webhooks/paymenthub",
        &signed("paymenthub", 1, "evt_rot", sign::now(), &body),
        body,
    )
    .await;
    assert_eq!(reply.status, 200);
    let records = kafka::read_records(broker.bootstrap(), &topic, 1, Duration::from_secs(20)).await;
    let raw: RawWebhook = decode(records[0].payload().unwrap()).unwrap();
    assert_eq!(raw.secret_index, 1);
    let text = String::from_utf8_lossy(records[0].payload().unwrap()).into_owned();
    for s in secrets_of("paymenthub") {
        assert!(!text.contains(s), "a secret leaked into the record");
    }
    let metrics = get(&ingest.addr(), "/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(!metrics.contains("ph-new-secret") && !metrics.contains("ph-old-secret"));
    ingest.stop().await;
}

#[tokio::test]
async fn a_captured_request_re_sent_with_a_fresh_unsigned_id_is_the_same_event() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let addr = ingest.addr();
    // A GitHub-style body: no id of its own; the delivery id header is not signed.
    let body = br#"{"payment_id":"pay_gh","type":"payment.completed","metadata":{"policy_id":"pol_gh"}}"#.to_vec();
    let mut ids = Vec::new();
    for delivery in ["delivery-1", "delivery-2-forged"] {
        let r = post(
            &addr,
            "/webhooks/github",
            &signed("github", 0, delivery, 0, &body),
            body.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        ids.push(r.json()["event_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(ids[0], ids[1], "the processor sees one event twice: a duplicate");
    assert!(ids[0].starts_with("sha256:"), "{}", ids[0]);
    // The same for hmac-sha256 with a body id: a fresh x-event-id changes nothing.
    let body = sign::payment_body("evt_cap", "pay_cap", None, "payment.completed", Some("pol_cap"));
    let r = post(
        &addr,
        "/webhooks/paymenthub",
        &signed("paymenthub", 0, "evt_fresh", sign::now(), &body),
        body,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["event_id"].clone()),
        (200, "evt_cap".into())
    );
    ingest.stop().await;
}

/// Providers do not retry a 4xx, so an id header that disagrees with the body's id is
/// accepted: a signed id header is the event id (standard-webhooks' `webhook-id` is the
/// message's idempotency key whatever the body's `id` says), an unsigned one never is
/// (`x-event-id`, GitHub's per-delivery `X-GitHub-Delivery`: the body's id is); each
/// disagreement is counted.
#[tokio::test]
async fn an_id_header_that_disagrees_with_the_body_is_accepted_and_the_signed_one_decides() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let addr = ingest.addr();
    let now = sign::now();
    let body = sign::payment_body("evt_body", "pay_dis", Some(1), "payment.created", Some("pol_dis"));
    for (source, want) in [
        ("paymenthub", "evt_body"),
        ("github", "evt_body"),
        ("standard", "msg_header"),
    ] {
        let r = post(
            &addr,
            &format!("/webhooks/{source}"),
            &signed(source, 0, "msg_header", now, &body),
            body.clone(),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.json()["event_id"].clone()),
            (200, want.into()),
            "{source}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let metrics = hookstream_tests::http::get(&addr, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for source in ["paymenthub", "github", "standard"] {
        let line = format!("hookstream_ingest_event_id_disagreements_total{{source=\"{source}\"}} 1");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    ingest.stop().await;
}

#[tokio::test]
async fn oversized_body_without_content_length_is_cut_off_at_the_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(ingest.addr).await.unwrap();
    // Headers that pass the checks made before the body is read (a signature of the
    // right shape, a fresh timestamp); the body is what is too large.
    let head = format!(
        "POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-event-id: e\r\n\
         x-timestamp: {}\r\nx-signature: sha256={}\r\n\r\n",
        sign::now(),
        "0".repeat(64)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Stream 50 MB in 64 KiB chunks; ingest must answer 413 long before the end.
    let chunk = vec![b'a'; 65_536];
    let mut sent = 0usize;
    let mut reply = Vec::new();
    while sent < 50 << 20 {
        let frame = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();
        if s.write_all(&frame).await.is_err() {
            break;
        }
        sent += chunk.len();
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || reply.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    }
    if reply.is_empty() {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(sent < 10 << 20, "ingest read {sent} bytes before answering");
    ingest.stop().await;
}
