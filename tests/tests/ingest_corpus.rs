//! A corpus of hostile and malformed requests against ingest on a real socket, each
//! with the status and error code it must get (ingest/README.md, the status table).
//! Requests are raw bytes, so HTTP that no client library would send is sent as is.
//! Whatever the request: no 500, no 200 for anything not validly signed, and ingest
//! still answers a signed webhook afterwards.

use std::time::Duration;

use hookstream_tests::broker::Broker;
use hookstream_tests::ingest::{scheme_of, secrets_of, start};
use hookstream_tests::{kafka, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod cases;
use cases::{body_cases, http_cases, signature_cases};

const SOURCES: [&str; 4] = ["paymenthub", "standard", "stripe", "github"];

/// One request and what it must get. `code` `None`: answered by the HTTP layer, no
/// JSON; status 0: the connection is closed without an answer.
struct Case {
    name: String,
    bytes: Vec<u8>,
    status: &'static [u16],
    code: Option<&'static str>,
    /// Validly signed: 200 is allowed.
    signed: bool,
}

fn case(name: impl Into<String>, bytes: Vec<u8>, status: &'static [u16], code: Option<&'static str>) -> Case {
    Case {
        name: name.into(),
        bytes,
        status,
        code,
        signed: false,
    }
}

/// A request to `/webhooks/{source}` with `headers` and `body` (Content-Length set).
fn http(source: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut h = format!(
        "POST /webhooks/{source} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    [h.into_bytes(), body.to_vec()].concat()
}

fn signed(source: &str, id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    sign::sign(scheme_of(source), secrets_of(source)[0], id, ts, body)
}

fn body(id: &str) -> Vec<u8> {
    sign::payment_body(id, "pay_c", Some(1), "payment.created", None)
}

fn without(h: &[(String, String)], name: &str) -> Vec<(String, String)> {
    h.iter().filter(|(k, _)| k != name).cloned().collect()
}

fn replace(h: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.clone(), if k == name { value.to_owned() } else { v.clone() }))
        .collect()
}

/// Send `bytes` and read the answer (until the server closes or stays quiet for
/// 300 ms); its status and JSON `error`, interim 100 Continue skipped.
async fn exchange(addr: &str, bytes: &[u8]) -> (u16, Option<String>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let wait = if out.is_empty() {
            deadline
        } else {
            tokio::time::Instant::now() + Duration::from_millis(300)
        };
        match tokio::time::timeout_at(wait.min(deadline), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    // Skip interim 100 Continue answers.
    let last = text
        .split("HTTP/1.")
        .find(|a| !a.is_empty() && !a.starts_with("1 100"))
        .unwrap_or_default();
    let status = last.get(2..5).and_then(|s| s.parse().ok()).unwrap_or(0);
    let code = last
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    (status, code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_its_documented_answer() {
    let broker = Broker::shared();
    let topic = kafka::unique_topic("corpus.raw");
    kafka::create_topic(broker.bootstrap(), &topic, 2).await;
    let ingest = start(broker.bootstrap(), &topic, |_| {}).await;
    let addr = ingest.addr();
    let now = sign::now();
    let cases: Vec<Case> = [signature_cases(now), body_cases(now), http_cases(now)]
        .into_iter()
        .flatten()
        .collect();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let (status, code, text) = exchange(&addr, &c.bytes).await;
        let status_ok = c.status.contains(&status);
        let code_ok = c.code.is_none() || code.as_deref() == c.code;
        if !status_ok || !code_ok || status >= 500 || (status == 200 && !c.signed) {
            failures.push(format!(
                "{}: got {status} {code:?}, want {:?} {:?}\n{}",
                c.name,
                c.status,
                c.code,
                text.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Pipelined: two signed requests in one write get two answers, in order.
    let (b1, b2) = (body("evt_pipe1"), body("evt_pipe2"));
    let two = [
        http("paymenthub", &signed("paymenthub", "evt_pipe1", now, &b1), &b1),
        http("paymenthub", &signed("paymenthub", "evt_pipe2", now, &b2), &b2),
    ]
    .concat();
    let (_, _, text) = exchange(&addr, &two).await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.find("evt_pipe1") < text.find("evt_pipe2"), "{text}");
    // Still serving.
    let b = body("evt_after");
    let r = hookstream_tests::http::post(
        &addr,
        "/webhooks/paymenthub",
        &signed("paymenthub", "evt_after", sign::now(), &b),
        b,
    )
    .await;
    assert_eq!(r.status, 200);
    ingest.stop().await;
}
