//! The policy stage on the real broker: the log decides which payment holds a policy,
//! across a group with a crash, after every state directory is wiped and the log is
//! replayed, through refunds, and whatever another source calls its payments.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookstream_processor::cli::replay::{self, ReplayFrom};
use hookstream_processor::rules::decide::activation_id;
use hookstream_schemas::{decode, DeadLetter, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::http;
use hookstream_tests::ingest::{scheme_of, secrets_of};
use hookstream_tests::pipeline::{Event, Pipeline, WAIT};
use hookstream_tests::processor::{spawn_instance, test_config, RunningProcessor, Topics};
use hookstream_tests::{ingest, kafka, sign};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

/// Send one payment event from `source`; panics unless ingest answers 200.
async fn send(addr: &str, source: &str, event_id: &str, payment: &str, ty: &str, policy: Option<&str>) {
    let body = sign::payment_body(event_id, payment, None, ty, policy);
    let h = sign::sign(scheme_of(source), secrets_of(source)[0], event_id, sign::now(), &body);
    let r = http::post(addr, &format!("/webhooks/{source}"), &h, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// What `policy.activations` says, per policy, in topic order: `activated <payment>`,
/// `cancelled <payment>`, `duplicate <payment> of <holder>`, and the ids of each kind.
#[derive(Debug, Default)]
struct Events {
    lines: BTreeMap<String, Vec<String>>,
    activation_ids: BTreeMap<String, BTreeSet<String>>,
    duplicate_ids: BTreeSet<String>,
}

fn events(records: &[OwnedMessage]) -> Events {
    let mut e = Events::default();
    for m in records {
        let p: PolicyEvent = decode(m.payload().unwrap()).unwrap();
        let line = match &p.event {
            PolicyEventKind::Activated(a) => {
                e.activation_ids
                    .entry(p.policy_id.clone())
                    .or_default()
                    .insert(a.activation_id.clone());
                format!("activated {}", a.payment_id)
            }
            PolicyEventKind::Cancelled(c) => format!("cancelled {}", c.payment_id),
            PolicyEventKind::Duplicated(d) => {
                e.duplicate_ids.insert(d.duplicate_id.clone());
                format!("duplicate {} of {}", d.payment_id, d.active_payment_id)
            }
        };
        e.lines.entry(p.policy_id.clone()).or_default().push(line);
    }
    e
}

/// Read `topic` until `done` holds for what it says, or `timeout`.
async fn read_events(bootstrap: &str, topic: &str, timeout: Duration, done: impl Fn(&Events) -> bool) -> Events {
    let records = kafka::read_until(bootstrap, topic, timeout, |r| done(&events(r))).await;
    events(&records)
}

const POLICIES: usize = 60;

/// Every policy paid twice, by `pay_{i}_a` and `pay_{i}_b` (keys that mostly hash to
/// different raw partitions), both completing at about the same time.
fn double_payments(addr: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in (0..POLICIES).collect::<Vec<_>>().chunks(10) {
            let mut tasks = Vec::new();
            for &i in chunk {
                for side in ["a", "b"] {
                    let addr = addr.clone();
                    tasks.push(tokio::spawn(async move {
                        let (pay, pol) = (format!("pay_{i}_{side}"), format!("pol_d{i}"));
                        send(
                            &addr,
                            "paymenthub",
                            &format!("e_{i}_{side}_1"),
                            &pay,
                            "payment.created",
                            Some(&pol),
                        )
                        .await;
                        send(
                            &addr,
                            "paymenthub",
                            &format!("e_{i}_{side}_2"),
                            &pay,
                            "payment.completed",
                            Some(&pol),
                        )
                        .await;
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

/// One activation and one duplicate notice per policy, naming the two payments.
fn assert_one_holder_and_one_duplicate_each(e: &Events, where_: &str) {
    for i in 0..POLICIES {
        let pol = format!("pol_d{i}");
        let lines = e.lines.get(&pol).cloned().unwrap_or_default();
        let (a, b) = (format!("pay_{i}_a"), format!("pay_{i}_b"));
        let distinct: BTreeSet<&String> = lines.iter().collect();
        let one_way = BTreeSet::from([format!("activated {a}"), format!("duplicate {b} of {a}")]);
        let other_way = BTreeSet::from([format!("activated {b}"), format!("duplicate {a} of {b}")]);
        let distinct: BTreeSet<String> = distinct.into_iter().cloned().collect();
        assert!(
            distinct == one_way || distinct == other_way,
            "{pol}: {lines:?} (one holder, the other payment announced as its duplicate); {where_}"
        );
        assert_eq!(e.activation_ids[&pol].len(), 1, "{pol}: one activation id; {where_}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_payments_per_policy_across_a_group_with_a_crash_give_one_holder_and_one_duplicate_notice() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 12).await;
    let dir = tempfile::Builder::new()
        .prefix("hookstream-policy-")
        .tempdir()
        .unwrap()
        .keep();
    let base = test_config(broker.bootstrap(), &topics, &dir.join("unused"));
    let instance = |name: &str| spawn_instance(&base, &dir, name);
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let (a, b, c) = (instance("a"), instance("b"), instance("c"));
    let sender = double_payments(ingest.addr());
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.kill();
    sender.await.unwrap();

    let e = read_events(broker.bootstrap(), &topics.activations, Duration::from_secs(120), |e| {
        (0..POLICIES).all(|i| e.lines.get(&format!("pol_d{i}")).is_some_and(|l| l.len() >= 2))
    })
    .await;
    assert_one_holder_and_one_duplicate_each(&e, &format!("logs kept in {}", dir.display()));
    let dead = kafka::read_records(broker.bootstrap(), &topics.dlq, 1, Duration::from_secs(2)).await;
    let reasons: Vec<_> = dead
        .iter()
        .map(|m| decode::<DeadLetter>(m.payload().unwrap()).unwrap().reason)
        .collect();
    assert!(reasons.is_empty(), "a duplicate payment is no failure: {reasons:?}");
    // The test covered what it claims: payments of one policy on different partitions.
    let raw = kafka::read_records(broker.bootstrap(), &topics.raw, 4 * POLICIES, Duration::from_secs(10)).await;
    let partition_of: BTreeMap<String, i32> = raw.iter().map(|m| (kafka::key_str(m), m.partition())).collect();
    let split = (0..POLICIES)
        .filter(|i| partition_of[&format!("pay_{i}_a")] != partition_of[&format!("pay_{i}_b")])
        .count();
    assert!(
        split >= POLICIES / 2,
        "only {split} policies had their payments on different partitions"
    );
    drop((a, c));
    ingest.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_state_and_a_replay_from_the_beginning_choose_the_same_holders_with_the_same_ids() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let state = tempfile::tempdir().unwrap();
    let config = test_config(broker.bootstrap(), &topics, state.path());
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let processor = RunningProcessor::start(config.clone()).await;
    double_payments(ingest.addr()).await.unwrap();
    let all_decided =
        |e: &Events| (0..POLICIES).all(|i| e.lines.get(&format!("pol_d{i}")).is_some_and(|l| l.len() >= 2));
    let before = read_events(
        broker.bootstrap(),
        &topics.activations,
        Duration::from_secs(90),
        all_decided,
    )
    .await;
    assert_one_holder_and_one_duplicate_each(&before, "first run");
    processor.stop().await;

    // Every state directory wiped, the group moved back to the start of the raw log:
    // the payment stage sends every request again; the policy stage, its state rebuilt
    // from its own log, publishes again what each request got.
    std::fs::remove_dir_all(state.path()).unwrap();
    replay::run(&config.kafka, &ReplayFrom::Beginning, false).await.unwrap();
    let processor = RunningProcessor::start(config.clone()).await;
    let twice = |e: &Events| (0..POLICIES).all(|i| e.lines.get(&format!("pol_d{i}")).is_some_and(|l| l.len() >= 4));
    let after = read_events(broker.bootstrap(), &topics.activations, Duration::from_secs(90), twice).await;
    assert_eq!(
        after.activation_ids, before.activation_ids,
        "the same holder, the same activation id, per policy"
    );
    assert_eq!(
        after.duplicate_ids, before.duplicate_ids,
        "the same duplicate notices, re-published"
    );
    for (pol, lines) in &after.lines {
        let first = &before.lines[pol];
        assert_eq!(&lines[..2], &first[..], "{pol}");
        let again: BTreeSet<&String> = lines[2..].iter().collect();
        assert_eq!(
            again,
            first.iter().collect(),
            "{pol}: the replay re-publishes the same decisions"
        );
        assert_eq!(lines.len(), 4, "{pol}: once each: {lines:?}");
    }
    processor.stop().await;
    ingest.stop().await;
}

/// Paid, refunded, paid again: activated, cancelled, activated again with a new id.
/// Then a duplicate of the new holder and its refund: nothing changes for the policy.
/// Then a payment id that stripe uses too: stripe's refund of *its* pay_n is another
/// payment, and pay_n of paymenthub keeps its policy. Each step waits for the policy
/// events the one before it leads to (their order across payments is the log's).
async fn send_refunds_and_namesakes(p: &Pipeline) {
    let steps: [(Event, Option<(&str, usize)>); 7] = [
        (
            Event::completed("pay_r1").id("r1_done").policy("pol_r"),
            Some(("pol_r", 1)),
        ),
        (
            Event::refunded("pay_r1").id("r1_refund").policy("pol_r"),
            Some(("pol_r", 2)),
        ),
        (
            Event::completed("pay_r2").id("r2_done").policy("pol_r"),
            Some(("pol_r", 3)),
        ),
        (
            Event::completed("pay_r3").id("r3_done").policy("pol_r"),
            Some(("pol_r", 4)),
        ),
        (Event::refunded("pay_r3").id("r3_refund").policy("pol_r"), None),
        (
            Event::completed("pay_n").id("n_done").policy("pol_n"),
            Some(("pol_n", 1)),
        ),
        (
            Event::refunded("pay_n")
                .id("evt_stripe_n")
                .policy("pol_n")
                .from("stripe"),
            None,
        ),
    ];
    for (e, wait) in steps {
        p.send(e).await;
        if let Some((pol, n)) = wait {
            let enough = move |e: &Events| e.lines.get(pol).is_some_and(|l| l.len() >= n);
            read_events(p.bootstrap(), &p.topics.activations, WAIT, enough).await;
        }
    }
    // Both refunds decided (the payment stage for stripe's, the policy stage for pay_r3's).
    http::poll(p.admin(), "/payments/pay_n?source=stripe", |r| {
        r.status == 200 && r.json()["status"] == "refunded"
    })
    .await;
    http::poll(p.admin(), "/policies/pol_r", |r| {
        let payments = r.json()["payments"].clone();
        let refunded = |x: &serde_json::Value| x["payment_id"] == "pay_r3" && x["standing"] == "refunded";
        r.status == 200 && payments.as_array().is_some_and(|ps| ps.iter().any(refunded))
    })
    .await;
}

/// The admin API: pol_r's payments and their standing, pay_n of each source.
async fn assert_the_admin_view_of_refunds(p: &Pipeline) {
    let v = p.admin_get("/policies/pol_r").await.json();
    assert_eq!(v["holder"]["payment_id"], "pay_r2", "{v:#}");
    let standings: Vec<(&str, &str)> = v["payments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            (
                x["payment_id"].as_str().unwrap_or_default(),
                x["standing"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        standings,
        [("pay_r1", "released"), ("pay_r2", "holder"), ("pay_r3", "refunded")]
    );
    let v = p.admin_get("/payments/pay_n").await.json();
    assert_eq!(
        (v["source"].clone(), v["status"].clone()),
        ("paymenthub".into(), "completed".into()),
        "{v:#}"
    );
    assert_eq!(v["other_sources"], serde_json::json!(["stripe"]));
    let v = p.admin_get("/payments/pay_n?source=stripe").await.json();
    assert_eq!(
        (v["status"].clone(), v["activation"].clone()),
        ("refunded".into(), serde_json::Value::Null)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_release_the_policy_and_namesakes_from_another_source_are_other_payments() {
    let p = Pipeline::start(4).await;
    send_refunds_and_namesakes(&p).await;
    let e = events(&kafka::read_records(p.bootstrap(), &p.topics.activations, 99, Duration::from_secs(3)).await);
    assert_eq!(
        e.lines["pol_r"],
        [
            "activated pay_r1",
            "cancelled pay_r1",
            "activated pay_r2",
            "duplicate pay_r3 of pay_r2"
        ],
        "the refund of a duplicate changes nothing for the policy"
    );
    let want = BTreeSet::from([
        activation_id("pol_r", "paymenthub", "r1_done"),
        activation_id("pol_r", "paymenthub", "r2_done"),
    ]);
    assert_eq!(e.activation_ids["pol_r"], want, "activated again with a new id");
    assert_eq!(
        e.lines["pol_n"],
        ["activated pay_n"],
        "another source's refund leaves the policy alone"
    );
    assert_the_admin_view_of_refunds(&p).await;
    p.stop().await;
}
