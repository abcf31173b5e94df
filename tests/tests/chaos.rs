//! Chaos on the real broker: ingest SIGKILLed under concurrent load and started again —
//! every event id it answered 200 is in the raw topic; the broker SIGKILLed under load
//! while the processor runs — 503 meanwhile, no acknowledged webhook lost, one activation
//! per completed payment; and no configured secret ever shows up in a log, a metric, a
//! raw record or a dead letter. (The processor's own SIGKILLs are in `crash.rs`.)

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookstream_schemas::{decode, RawWebhook};
use hookstream_tests::broker::Broker;
use hookstream_tests::ingest::{scheme_of, secrets_of, wait_ready, ChildIngest};
use hookstream_tests::processor::{self, ChildProcessor, Topics};
use hookstream_tests::providers::{finish, retrying_lifecycles, Seen};
use hookstream_tests::{http, kafka, sign};
use rdkafka::Message;

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
    let mut ingest = ChildIngest::spawn(broker.bootstrap(), &topic, dir.path(), |_| {}, &[]);
    let (addr, log) = (ingest.addr.clone(), ingest.log.clone());
    wait_ready(&addr).await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let workers = load(addr.clone(), 16, acked.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().unwrap().len();
    ingest.kill(); // SIGKILL, mid-load
    tokio::time::sleep(Duration::from_millis(300)).await;
    ingest.restart();
    wait_ready(&addr).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.cancel();
    let mut sent = 0;
    for w in workers {
        sent += w.await.unwrap();
    }
    ingest.kill();
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

/// The processor as a binary, given its own secret the way production gives it (a SASL
/// password, unused on this plaintext listener, in a file named by the environment), and
/// logging its client configuration (librdkafka's `conf` debug context, which redacts
/// secrets). The secret's text.
fn spawn_processor_with_a_secret(bootstrap: &str, topics: &Topics, dir: &Path) -> (ChildProcessor, &'static str) {
    let processor_secret = "processor-sasl-password-4f1c9e";
    let secret_file = dir.join("sasl-password");
    std::fs::write(&secret_file, processor_secret).unwrap();
    let mut processor_config = processor::test_config(bootstrap, topics, &dir.join("state"));
    processor_config.kafka.debug = "conf".into();
    let processor = ChildProcessor::spawn_with_env(
        &processor_config,
        dir,
        &[
            ("PROCESSOR_LIBRDKAFKA_SASL_PASSWORD_FILE", secret_file.to_str().unwrap()),
            ("RUST_LOG", "debug,rdkafka=info"),
        ],
    );
    (processor, processor_secret)
}

/// Load through ingest; the broker SIGKILLed after 2 s and started again 5 s later;
/// the load goes on until 50 more webhooks are acknowledged after the restart. What
/// the load saw.
async fn kill_the_broker_under_load(broker: &Broker, addr: &str) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let workers = retrying_lifecycles(addr.to_owned(), 6, seen.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = seen.lock().unwrap().acked.len();
    broker.stop(false); // SIGKILL
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = seen.lock().unwrap().unavailable;
    broker.start();
    let restarted = tokio::time::Instant::now();
    let acked_at_restart = seen.lock().unwrap().acked.len();
    while seen.lock().unwrap().acked.len() < acked_at_restart + 50 {
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "ingest did not recover within 60 s of the broker's restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = finish(&stop, workers, &seen).await;
    eprintln!(
        "broker kill: {before_kill} acknowledged before, {during} answers 503 while it was down, \
         200 again {recovered:?} after its restart, {} acknowledged, {} payments completed",
        seen.acked.len(),
        seen.completed.len()
    );
    assert!(before_kill > 0, "load before the kill");
    assert!(during > 0, "503 + Retry-After while the broker was down");
    assert!(
        seen.other.is_empty(),
        "answers other than 200 and 503 + Retry-After: {:?}",
        seen.other
    );

    seen
}

/// No configured secret (ingest's, the processor's) in either log, either metrics page,
/// a raw record or a dead letter; the processor was given its secret (librdkafka logs
/// it redacted).
fn assert_no_secret_shows(texts: &[(&str, String)], processor_secret: &str) {
    let mut secrets: Vec<&str> = ["paymenthub", "standard", "stripe", "github"]
        .iter()
        .flat_map(|s| secrets_of(s).iter().copied())
        .collect();
    secrets.push(processor_secret);
    for (what, text) in texts {
        assert!(
            !text.is_empty() || what.starts_with('a'),
            "{what} is empty: nothing was checked"
        );
        for s in &secrets {
            assert!(!text.contains(s), "a configured secret in {what}");
        }
    }
    assert!(
        texts[1].1.contains("sasl.password = [redacted]"),
        "the processor was given its secret (librdkafka logs it redacted)"
    );
}

/// The broker SIGKILLed under load through ingest while the
/// processor runs, and started again after 5 s: ingest answers 503 + Retry-After while it
/// is gone and 200 again by itself once it is back, every webhook answered 200 is in the
/// raw topic, the processor (never restarted) activates each completed payment exactly
/// once, and no configured secret shows up in a log, a metric, a raw record or a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_broker_under_load_loses_no_acknowledged_webhook_and_activates_once() {
    let broker = Broker::dedicated();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let ingest = ChildIngest::spawn(
        broker.bootstrap(),
        &topics.raw,
        dir.path(),
        |c| c.kafka.ack_deadline = Duration::from_secs(2),
        &[],
    );
    let (addr, ingest_log) = (ingest.addr.clone(), ingest.log.clone());

    let (processor, processor_secret) = spawn_processor_with_a_secret(broker.bootstrap(), &topics, dir.path());
    wait_ready(&addr).await;
    processor.wait_assigned(Duration::from_secs(60)).await;
    let seen = kill_the_broker_under_load(&broker, &addr).await;

    // Every acknowledged webhook is in the raw topic.
    let raw = seen.assert_acknowledged_in(broker.bootstrap(), &topics.raw).await;
    // The processor rode out the outage (its transactions aborted and retried) and
    // activated each completed payment once, delivered once.
    seen.assert_each_activation_delivered_once(broker.bootstrap(), &topics.activations, "")
        .await;

    // A dead letter (a completed payment that names no policy), then the secrets grep.
    let body = sign::payment_body("evt_b_nopol", "pay_b_nopol", None, "payment.completed", None);
    let h = sign::sign(
        scheme_of("paymenthub"),
        secrets_of("paymenthub")[1],
        "evt_b_nopol",
        sign::now(),
        &body,
    );
    assert_eq!(http::post(&addr, "/webhooks/paymenthub", &h, body).await.status, 200);
    let dead = kafka::read_records(broker.bootstrap(), &topics.dlq, 1, Duration::from_secs(30)).await;
    assert!(!dead.is_empty(), "the payment without a policy is dead-lettered");
    let mut texts = vec![
        ("ingest's log", std::fs::read_to_string(&ingest_log).unwrap()),
        ("the processor's log", processor_logs(dir.path())),
        ("ingest's metrics", metrics_text(&addr).await),
        ("the processor's metrics", metrics_text(&processor.admin).await),
    ];
    for (what, records) in [("a raw record", &raw), ("a dead letter", &dead)] {
        for m in records {
            texts.push((
                what,
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
        }
    }
    assert_no_secret_shows(&texts, processor_secret);
    let mut processor = processor;
    assert!(
        processor.wait_exit(Duration::ZERO).is_none(),
        "the processor exited during the outage instead of resuming:\n{}",
        processor_logs(dir.path())
    );
    drop(ingest);
}

/// Every processor log in `dir`.
fn processor_logs(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("processor-") && name.ends_with(".log") {
            out.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
    }
    out
}

async fn metrics_text(addr: &str) -> String {
    String::from_utf8_lossy(&http::get(addr, "/metrics").await.body).into_owned()
}

/// A librdkafka property the build refuses (a typo in a variable name, a TLS setting in
/// a build without TLS), with a secret as its value: each binary exits at start-up naming
/// the property, and the value shows up nowhere in its output.
#[test]
fn a_refused_librdkafka_property_is_named_and_its_secret_value_never_printed() {
    let secret = "kafka-secret-value-8d2e61";
    let cases = [
        ("SASL_PASWORD", "sasl.pasword"),
        ("SSL_KEY_PASSWORD", "ssl.key.password"),
    ];
    for (suffix, property) in cases {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics {
            raw: "raw".into(),
            activations: "activations".into(),
            dlq: "dlq".into(),
        };
        let config = processor::test_config("127.0.0.1:1", &topics, &dir.path().join("state"));
        let var = format!("PROCESSOR_LIBRDKAFKA_{suffix}");
        let mut p = ChildProcessor::spawn_with_env(&config, dir.path(), &[(var.as_str(), secret)]);
        let status = p.wait_exit(Duration::from_secs(30));
        let out = p.log_tail();
        assert!(
            status.is_some_and(|s| !s.success()),
            "processor must refuse to start:\n{out}"
        );
        assert!(out.contains(property), "processor names `{property}`:\n{out}");
        assert!(
            !out.contains(secret),
            "processor printed the value of `{property}`:\n{out}"
        );

        let var = format!("INGEST_LIBRDKAFKA_{suffix}");
        let mut i = ChildIngest::spawn("127.0.0.1:1", "raw", dir.path(), |_| {}, &[(var.as_str(), secret)]);
        let status = i.wait_exit(Duration::from_secs(30));
        let out = std::fs::read_to_string(&i.log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| !s.success()),
            "ingest must refuse to start:\n{out}"
        );
        assert!(out.contains(property), "ingest names `{property}`:\n{out}");
        assert!(
            !out.contains(secret),
            "ingest printed the value of `{property}`:\n{out}"
        );
    }
}
