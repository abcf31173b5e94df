//! Traces leave the processes and link up, and a webhook can be followed from receipt
//! to decision: ingest and the processor run as real binaries exporting over OTLP/HTTP
//! (configured only by the standard `OTEL_*` variables) to a receiver in this test,
//! which decodes what they send with opentelemetry-proto's types.

use std::time::Duration;

use hookstream_schemas::topics::headers;
use hookstream_tests::broker::Broker;
use hookstream_tests::ingest::{scheme_of, secrets_of, wait_ready, ChildIngest};
use hookstream_tests::otlp::{ReceivedSpan, Receiver};
use hookstream_tests::processor::{self, downstream_example, ChildProcessor, Topics};
use hookstream_tests::{http, kafka, sign};
use rdkafka::message::Headers;
use rdkafka::Message;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The one span named `name` of `service` in the trace whose parent is `parent`.
fn span<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str, parent: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.trace_id == TRACE && s.service == service && s.name == name && s.parent_span_id == parent)
}

/// The trace as an indented tree, for failure messages.
fn tree(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .filter(|s| s.trace_id == TRACE)
        .map(|s| {
            format!(
                "{} {} {} <- {} {:?}",
                s.service, s.name, s.span_id, s.parent_span_id, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `pay_t`'s lifecycle through ingest, the completion with the provider's own trace
/// context; the completion's (partition, offset) as ingest answered.
async fn send_a_traced_lifecycle(addr: &str) -> (i64, i64) {
    sign::send_event(addr, "evt_t_1", "pay_t", Some(1), "payment.created", Some("pol_t")).await;
    sign::send_event(addr, "evt_t_2", "pay_t", Some(2), "payment.processing", Some("pol_t")).await;
    let body = sign::payment_body("evt_t_3", "pay_t", Some(3), "payment.completed", Some("pol_t"));
    let mut h = sign::sign(
        scheme_of("paymenthub"),
        secrets_of("paymenthub")[0],
        "evt_t_3",
        sign::now(),
        &body,
    );
    h.push(("traceparent".into(), format!("00-{TRACE}-{CALLER_SPAN}-01")));
    let reply = http::post(addr, "/webhooks/paymenthub", &h, body).await;
    assert_eq!(reply.status, 200);
    (
        reply.json()["partition"].as_i64().unwrap(),
        reply.json()["offset"].as_i64().unwrap(),
    )
}

/// The traceparent header of the first record of `topic`.
async fn first_traceparent(bootstrap: &str, topic: &str) -> String {
    let records = kafka::read_records(bootstrap, topic, 1, Duration::from_secs(60)).await;
    let activation = records.first().expect("the activation");
    activation
        .headers()
        .and_then(|hs| hs.iter().find(|h| h.key == headers::TRACEPARENT))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("the activation carries a traceparent")
}

/// Every span of the chain, once it arrived at the receiver, each the child of the one
/// before: ingest's request, the payment stage's record, the policy stage's record.
async fn the_chain_of_spans(receiver: &Receiver) -> (ReceivedSpan, ReceivedSpan, ReceivedSpan) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans = receiver.spans();
        let request = span(&spans, "hookstream-ingest", "ingest.webhook", CALLER_SPAN);
        let payments = request.and_then(|r| span(&spans, "hookstream-processor", "processor.record", &r.span_id));
        let policies = payments.and_then(|p| span(&spans, "hookstream-processor", "processor.record", &p.span_id));
        let phases_done = |parent: &ReceivedSpan, names: &[&str]| {
            names
                .iter()
                .all(|n| spans.iter().any(|s| s.name == *n && s.parent_span_id == parent.span_id))
        };
        if let (Some(r), Some(pay), Some(pol)) = (request, payments, policies) {
            let decide = [
                "processor.decide",
                "processor.emit",
                "processor.persist",
                "processor.commit",
            ];
            if phases_done(r, &["ingest.verify", "ingest.publish"])
                && phases_done(pay, &decide)
                && phases_done(pol, &decide)
            {
                break (r.clone(), pay.clone(), pol.clone());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trace is incomplete after 30 s:\n{}",
            tree(&spans)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The receipt trail: ingest's log line for the completion names its place and trace;
/// the processor's view of the payment names the raw offset it decided.
async fn assert_the_receipt_trail(
    ingest_log: &std::path::Path,
    admin: &str,
    raw: &str,
    (partition, offset): (i64, i64),
) {
    let logged = std::fs::read_to_string(ingest_log).unwrap();
    let received: serde_json::Value = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "webhook received" && l["fields"]["event_id"] == "evt_t_3")
        .unwrap_or_else(|| panic!("no receipt line for evt_t_3 in ingest's log:\n{logged}"));
    assert_eq!(
        (
            received["fields"]["partition"].as_i64(),
            received["fields"]["offset"].as_i64(),
            received["fields"]["trace_id"].as_str()
        ),
        (Some(partition), Some(offset), Some(TRACE))
    );
    let view = http::get(admin, "/payments/pay_t").await.json();
    assert_eq!(
        (view["topic"].as_str(), view["partition"].as_i64()),
        (Some(raw), Some(partition))
    );
    let decided = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["offset"].as_i64() == Some(offset))
        .unwrap_or_else(|| panic!("the view names the raw offset it decided: {view}"));
    assert_eq!(
        (decided["event_id"].as_str(), decided["outcome"].as_str()),
        (Some("evt_t_3"), Some("applied"))
    );
    assert_eq!(view["activation"]["event_id"], "evt_t_3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_links_the_request_the_decisions_the_activation_and_its_consumer() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 2).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info"),
    ];
    let ingest = ChildIngest::spawn(broker.bootstrap(), &topics.raw, dir.path(), |_| {}, &env);
    let (addr, ingest_log) = (ingest.addr.clone(), ingest.log.clone());
    let processor_config = processor::test_config(broker.bootstrap(), &topics, &dir.path().join("state"));
    let processor = ChildProcessor::spawn_with_env(&processor_config, dir.path(), &env);
    wait_ready(&addr).await;
    processor.wait_assigned(Duration::from_secs(60)).await;

    let (partition, offset) = send_a_traced_lifecycle(&addr).await;
    // The activation record carries the trace on.
    let traceparent = first_traceparent(broker.bootstrap(), &topics.activations).await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], TRACE, "{traceparent}");
    let (request, payments, policies) = the_chain_of_spans(&receiver).await;
    let attr = |s: &ReceivedSpan, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr(&request, "hookstream.source"), "paymenthub");
    assert_eq!(attr(&request, "hookstream.event_id"), "evt_t_3");
    assert_eq!(attr(&request, "hookstream.payment_id"), "pay_t");
    assert_eq!(
        attr(&request, "messaging.destination.partition.id"),
        partition.to_string()
    );
    assert_eq!(attr(&request, "messaging.kafka.offset"), offset.to_string());
    assert_eq!(attr(&request, "http.response.status_code"), "200");
    assert_eq!(
        (
            attr(&payments, "hookstream.stage"),
            attr(&payments, "hookstream.outcome")
        ),
        ("payments".into(), "applied".into())
    );
    assert_eq!(attr(&payments, "messaging.kafka.offset"), offset.to_string());
    assert_eq!(attr(&policies, "hookstream.stage"), "policies");
    assert_eq!(
        parts[2], policies.span_id,
        "the activation is the policy stage's record span's child"
    );

    // The example downstream consumer continues the same trace.
    let (lines, _) = downstream_example(broker.bootstrap(), &topics.activations, &["--from", "beginning"], 1);
    assert_eq!(
        lines.first().map(|l| l["trace_id"].clone()),
        Some(TRACE.into()),
        "{lines:?}"
    );

    assert_the_receipt_trail(&ingest_log, &processor.admin, &topics.raw, (partition, offset)).await;
    drop(ingest);
}
