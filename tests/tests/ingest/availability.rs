//! ingest when the broker, the load or a client misbehaves: readiness, 503 (never 200)
//! while the broker is away, 429 beyond the in-flight bound, a graceful shutdown,
//! clients that hang up, records too large for the broker, and a producer the broker
//! no longer knows.

use std::time::Duration;

use hookstream_tests::broker::Broker;
use hookstream_tests::http::{get, post};
use hookstream_tests::ingest::start;
use hookstream_tests::{kafka, sign};

use super::{accepted_once, raw_topic, send_created, signed};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    assert_eq!(get(&ingest.addr(), "/healthz").await.status, 200);
    let r = get(&ingest.addr(), "/readyz").await;
    assert_eq!((r.status.as_u16(), r.json()["ready"].clone()), (200, true.into()));
    let body = sign::payment_body("evt_m", "pay_m", None, "payment.created", None);
    let r = post(
        &ingest.addr(),
        "/webhooks/github",
        &signed("github", 0, "evt_m", sign::now(), &body),
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    let m = String::from_utf8_lossy(&get(&ingest.addr(), "/metrics").await.body).into_owned();
    for needle in [
        r#"hookstream_ingest_requests_total{source="github",status="200"} 1"#,
        "hookstream_ingest_delivery_seconds_bucket",
        "hookstream_ingest_in_flight_requests 0",
        "hookstream_ingest_producer_queue_depth",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    ingest.stop().await;
    // A topic that does not exist: not ready.
    let missing = kafka::unique_topic("ingest.missing");
    let ingest = start(broker.bootstrap(), &missing, |_| {}).await;
    let r = get(&ingest.addr(), "/readyz").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (503, "not_ready".into())
    );
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert_eq!(detail, format!("topic {missing} does not exist"));
    ingest.stop().await;
}

#[tokio::test]
async fn broker_stopped_means_503_with_retry_after_never_200() {
    let broker = Broker::dedicated();
    let topic = raw_topic(&broker).await;
    let ingest = start(broker.bootstrap(), &topic, |c| {
        c.kafka.ack_deadline = std::time::Duration::from_millis(1500)
    })
    .await;
    let addr = ingest.addr();
    let send = |i: usize| send_created(addr.clone(), format!("evt_down_{i}"));
    accepted_once(&addr, "evt_down_first").await;
    broker.stop(false);
    for i in 1..=3 {
        let r = send(i).await;
        assert_eq!(
            r.status,
            503,
            "request {i} with the broker down: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"], "broker_unavailable");
        assert_eq!(r.headers["retry-after"], "1");
    }
    assert_eq!(get(&addr, "/readyz").await.status, 503);
    ingest.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_bound_get_429() {
    let broker = Broker::dedicated();
    let topic = raw_topic(&broker).await;
    let ingest = start(broker.bootstrap(), &topic, |c| {
        c.http.max_in_flight_requests = 1;
        c.kafka.ack_deadline = std::time::Duration::from_millis(3000);
    })
    .await;
    broker.stop(false);
    let addr = ingest.addr();
    let body = sign::payment_body("evt_a", "pay_a", None, "payment.created", None);
    let h = signed("paymenthub", 0, "evt_a", sign::now(), &body);
    // The first request holds the only slot while it waits for the absent broker.
    let first = tokio::spawn({
        let (addr, h, body) = (addr.clone(), h.clone(), body.clone());
        async move { post(&addr, "/webhooks/paymenthub", &h, body).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = post(&addr, "/webhooks/paymenthub", &h, body).await;
    assert_eq!(second.status, 429);
    assert_eq!(
        (second.json()["error"].clone(), second.headers["retry-after"].clone()),
        ("overloaded".into(), "1".parse().unwrap())
    );
    assert_eq!(first.await.unwrap().status, 503);
    ingest.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let addr = ingest.addr();
    let mut inflight = Vec::new();
    for i in 0..20 {
        let addr = addr.clone();
        inflight.push(tokio::spawn(async move {
            let id = format!("evt_sd_{i}");
            let body = sign::payment_body(&id, &format!("pay_sd_{i}"), None, "payment.created", None);
            post(
                &addr,
                "/webhooks/paymenthub",
                &signed("paymenthub", 0, &id, sign::now(), &body),
                body,
            )
            .await
            .status
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(15), ingest.stop()).await;
    assert!(stopped.is_ok(), "ingest did not stop within its deadline");
    let mut ok = 0;
    for t in inflight {
        // A request is either answered 200 (and is then in Kafka) or never accepted (connection refused → panic in post, Err here).
        if let Ok(status) = t.await {
            assert_eq!(status, 200);
            ok += 1;
        }
    }
    let records = kafka::read_records(broker.bootstrap(), &topic, ok, Duration::from_secs(20)).await;
    assert_eq!(records.len(), ok, "every 200 is in Kafka");
}

/// The `in_flight_requests` gauge as ingest reports it.
async fn in_flight(addr: &str) -> i64 {
    let m = String::from_utf8_lossy(&get(addr, "/metrics").await.body).into_owned();
    m.lines()
        .find_map(|l| l.strip_prefix("hookstream_ingest_in_flight_requests "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge is reported")
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_leaves_no_request_in_flight() {
    use tokio::io::AsyncWriteExt;
    // A broker that never answers: the request waits for its acknowledgement.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let brokers = silent.local_addr().unwrap().to_string();
    let ingest = start(&brokers, "raw", |c| {
        c.kafka.ack_deadline = std::time::Duration::from_millis(3000)
    })
    .await;
    let body = sign::payment_body("evt_hang", "pay_hang", None, "payment.created", None);
    let mut head = format!(
        "POST /webhooks/paymenthub HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in signed("paymenthub", 0, "evt_hang", sign::now(), &body) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // One client hangs up while its request waits for the broker, one in the middle of its body.
    let mut waiting = tokio::net::TcpStream::connect(ingest.addr()).await.unwrap();
    waiting.write_all(head.as_bytes()).await.unwrap();
    waiting.write_all(&body).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(ingest.addr()).await.unwrap();
    partial.write_all(head.as_bytes()).await.unwrap();
    partial.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(in_flight(&ingest.addr()).await, 2, "both requests are in flight");
    drop(waiting);
    drop(partial);
    // Past the ack deadline every request has ended, answered or not.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(in_flight(&ingest.addr()).await, 0);
    ingest.stop().await;
}

#[tokio::test]
async fn a_record_the_broker_would_refuse_for_its_size_is_413_not_503() {
    let broker = Broker::shared();
    let topic = raw_topic(broker).await;
    let ingest = start(broker.bootstrap(), &topic, |c| {
        if let Some(s) = c.sources.get_mut("stripe") {
            s.max_body_bytes = 900 * 1024;
        }
        // Headers this large are refused with 431 by default (max_header_bytes 16 KiB);
        // raised here so that the record, not the headers, is what is too large.
        c.http.max_header_bytes = 512 * 1024;
    })
    .await;
    // A valid body under the body limit, signed, with a Stripe-Signature header padded
    // by 200 KB of other v1 signatures (the scheme allows several): the record that
    // carries both is larger than the broker takes.
    let mut body = sign::payment_body("evt_big", "pay_big", None, "payment.created", None);
    body.pop();
    body.extend_from_slice(format!(",\"pad\":\"{}\"}}", "x".repeat(850_000)).as_bytes());
    let mut h = signed("stripe", 0, "evt_big", sign::now(), &body);
    h[0].1.push_str(&",v1=00".repeat(200_000 / 6));
    let reply = post(&ingest.addr(), "/webhooks/stripe", &h, body).await;
    assert_eq!(reply.status, 413, "{}", String::from_utf8_lossy(&reply.body));
    ingest.stop().await;
}

/// A broker that lost its state (its log directory wiped and formatted anew; also an
/// expired producer id) answers every produce of the old producer id with UNKNOWN_PRODUCER_ID,
/// and librdkafka's own epoch bump keeps that id: ingest must not answer 503 forever
/// while `/readyz` says ready. It replaces the stuck producer, and webhooks are
/// accepted again.
#[tokio::test]
async fn a_producer_the_broker_no_longer_knows_is_replaced_and_ingest_recovers() {
    let broker = Broker::dedicated();
    let topic = raw_topic(&broker).await;
    let ingest = start(broker.bootstrap(), &topic, |c| {
        c.kafka.ack_deadline = std::time::Duration::from_millis(2000)
    })
    .await;
    let addr = ingest.addr();
    let send = |i: usize| {
        let addr = addr.clone();
        async move { send_created(addr, format!("evt_lost_{i}")).await.status }
    };
    accepted_once(&addr, "evt_lost_first").await;
    broker.stop(false);
    broker.wipe_node(1);
    broker.start();
    kafka::create_topic(broker.bootstrap(), &topic, 4).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut statuses = Vec::new();
    for i in 1.. {
        let status = send(i).await;
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not accepted 40 s after the broker came back: {statuses:?}"
        );
    }
    ingest.stop().await;
}
