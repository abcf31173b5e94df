//! Chaos on the real broker: ingest SIGKILLed under concurrent load and started again —
//! every event id it answered 200 is in the raw topic — and no configured secret ever
//! shows up in its log or in the records it wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookstream_schemas::{decode, RawWebhook};
use hookstream_tests::broker::Broker;
use hookstream_tests::ingest::{scheme_of, secrets_of, test_config};
use hookstream_tests::processor::workspace_bin;
use hookstream_tests::{http, kafka, sign};
use rdkafka::Message;

/// The ingest binary with `config_path`, its output appended to `log`.
fn spawn_ingest(config_path: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(workspace_bin("hookstream-ingest", "ingest"))
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", "debug,rdkafka=info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn ingest")
}

async fn wait_ready(addr: &str) {
    for _ in 0..200 {
        let probe = http::try_request(addr, ::http::Method::GET, "/readyz", &[], Vec::new());
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            if r.status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("ingest at {addr} never became ready");
}

/// Send signed webhooks with fresh ids from `workers` tasks until `stop`; every id
/// answered 200 goes to `acked`.
fn load(
    addr: String,
    workers: usize,
    acked: Arc<Mutex<BTreeSet<String>>>,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..workers)
        .map(|w| {
            let (addr, acked, stop) = (addr.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.is_cancelled() {
                    let id = format!("evt_chaos_{w}_{sent}");
                    sent += 1;
                    let body = sign::payment_body(&id, &format!("pay_chaos_{w}"), None, "payment.created", None);
                    let h = sign::sign(
                        scheme_of("paymenthub"),
                        secrets_of("paymenthub")[0],
                        &id,
                        sign::now(),
                        &body,
                    );
                    let answered = tokio::time::timeout(Duration::from_secs(5), async {
                        hookstream_tests::http::try_post(&addr, "/webhooks/paymenthub", &h, body).await
                    })
                    .await;
                    match answered {
                        Ok(Ok(r)) if r.status == 200 => {
                            acked.lock().unwrap().insert(id);
                        }
                        // Refused, reset by the kill, or no listener yet: not acknowledged.
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                sent
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_ingest_under_load_loses_no_acknowledged_webhook_and_leaks_no_secret() {
    let broker = Broker::shared();
    let topic = kafka::unique_topic("chaos.raw");
    kafka::create_topic(broker.bootstrap(), &topic, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topic, dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let config_path = dir.path().join("ingest.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let log = dir.path().join("ingest.log");
    let addr = format!("127.0.0.1:{port}");

    let mut ingest = spawn_ingest(&config_path, &log);
    wait_ready(&addr).await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let workers = load(addr.clone(), 16, acked.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().unwrap().len();
    ingest.kill().unwrap(); // SIGKILL, mid-load
    ingest.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ingest = spawn_ingest(&config_path, &log);
    wait_ready(&addr).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.cancel();
    let mut sent = 0;
    for w in workers {
        sent += w.await.unwrap();
    }
    let _ = ingest.kill();
    let _ = ingest.wait();
    let acked = acked.lock().unwrap().clone();
    assert!(
        before_kill > 0 && acked.len() > before_kill,
        "load before and after the kill: {before_kill}, {}",
        acked.len()
    );

    // Until every acknowledged id has been read back (or 20 s).
    let mut seen = BTreeSet::new();
    let records = kafka::read_until(broker.bootstrap(), &topic, Duration::from_secs(20), |r| {
        if let Some(raw) = r
            .last()
            .and_then(|m| m.payload())
            .and_then(|v| decode::<RawWebhook>(v).ok())
        {
            seen.insert(raw.event_id);
        }
        acked.is_subset(&seen)
    })
    .await;
    let mut in_topic = BTreeSet::new();
    let secrets: Vec<&str> = ["paymenthub", "standard", "stripe", "github"]
        .iter()
        .flat_map(|s| secrets_of(s).iter().copied())
        .collect();
    for m in &records {
        let value = m.payload().unwrap();
        let raw: RawWebhook = decode(value).unwrap();
        in_topic.insert(raw.event_id);
        for s in &secrets {
            assert!(!String::from_utf8_lossy(value).contains(s), "a secret in a raw record");
        }
    }
    let lost: Vec<_> = acked.difference(&in_topic).collect();
    assert!(lost.is_empty(), "answered 200 but not in the raw topic: {lost:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    for s in &secrets {
        assert!(!text.contains(s), "a secret in ingest's log");
    }
    assert!(
        sent > acked.len(),
        "some requests met the kill: {sent} sent, {} acknowledged",
        acked.len()
    );
}
