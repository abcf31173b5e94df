//! Zombies: a processor paused (SIGSTOP) past its session timeout while it holds
//! records, its partitions taken over by another instance, then resumed (SIGCONT), as a
//! GC pause, a stopped VM or a long fsync would. Under exactly-once it is fenced: a
//! `read_committed` reader sees each activation once, and a fresh instance restored
//! from the changelogs afterwards still knows every payment (each refund cancels its
//! activation, each second payment of a policy is a duplicate). Under at-least-once the
//! same holds with repeats allowed: each policy's events carry one id, however often
//! they are read.

use std::collections::BTreeMap;
use std::time::Duration;

use hookstream_processor::config::Guarantee;
use hookstream_schemas::{decode, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{spawn_instance, test_config, Topics};
use hookstream_tests::{ingest, kafka, sign};

const PAYMENTS: usize = 120;

/// Post one signed paymenthub webhook; panics unless it is accepted.
async fn post(addr: &str, event_id: &str, payment: &str, seq: i64, kind: &str, policy: &str) {
    let body = sign::payment_body(event_id, payment, Some(seq), kind, Some(policy));
    let h = sign::sign(
        ingest::scheme_of("paymenthub"),
        ingest::secrets_of("paymenthub")[0],
        event_id,
        sign::now(),
        &body,
    );
    let r = hookstream_tests::http::post(addr, "/webhooks/paymenthub", &h, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Policy events by kind and policy (their ids, as often as each is read), as a
/// `read_committed` reader sees them now.
type Events = BTreeMap<(&'static str, String), Vec<String>>;

async fn events(bootstrap: &str, topic: &str) -> Events {
    let mut by: Events = BTreeMap::new();
    for m in kafka::read_committed_to_end(bootstrap, topic).await {
        let Ok(e) = decode::<PolicyEvent>(rdkafka::Message::payload(&m).unwrap_or_default()) else {
            continue;
        };
        let kind = match e.event {
            PolicyEventKind::Activated(_) => "activated",
            PolicyEventKind::Cancelled(_) => "cancelled",
            PolicyEventKind::Duplicated(_) => "duplicated",
        };
        by.entry((kind, e.policy_id.clone()))
            .or_default()
            .push(e.id().to_owned());
    }
    by
}

/// How many policies have their promised events of `kind`, and the ones that break
/// the promise: exactly once, one event; at least once, any number with one id.
fn kept(by: &Events, kind: &str, guarantee: Guarantee) -> (usize, Vec<String>) {
    let ok = |ids: &Vec<String>| match guarantee {
        Guarantee::ExactlyOnceV2 => ids.len() == 1,
        Guarantee::AtLeastOnce => ids.iter().collect::<std::collections::BTreeSet<_>>().len() == 1,
    };
    let of_kind: Vec<_> = by.iter().filter(|((k, _), _)| *k == kind).collect();
    let broken = of_kind
        .iter()
        .filter(|(_, ids)| !ok(ids))
        .map(|((_, p), _)| p.clone())
        .collect();
    (of_kind.iter().filter(|(_, ids)| ok(ids)).count(), broken)
}

/// The policies without an event of `kind`.
fn missing(by: &Events, kind: &str) -> Vec<String> {
    (0..PAYMENTS)
        .map(|i| format!("pol_z{i}"))
        .filter(|p| !by.contains_key(&(kind_of(kind), p.clone())))
        .filter(|p| match kind {
            "cancelled" => p.trim_start_matches("pol_z").parse::<usize>().is_ok_and(|i| i % 2 == 0),
            "duplicated" => p.trim_start_matches("pol_z").parse::<usize>().is_ok_and(|i| i % 2 == 1),
            _ => true,
        })
        .collect()
}

fn kind_of(kind: &str) -> &'static str {
    match kind {
        "activated" => "activated",
        "cancelled" => "cancelled",
        _ => "duplicated",
    }
}

/// Wait until `want` policies have an event of `kind` (read_committed).
async fn wait_for(bootstrap: &str, topic: &str, kind: &str, want: usize, logs: impl Fn() -> String) -> Events {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let by = events(bootstrap, topic).await;
        if by.keys().filter(|(k, _)| *k == kind).count() >= want {
            return by;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} policies {kind} within 120 s; missing {:?}\n{}",
            by.keys().filter(|(k, _)| *k == kind).count(),
            missing(&by, kind),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_processor_resumed_after_its_partitions_moved_changes_nothing_committed() {
    paused_and_resumed(Guarantee::ExactlyOnceV2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_a_resumed_zombie_repeats_only_identical_events() {
    paused_and_resumed(Guarantee::AtLeastOnce).await;
}

/// A refund of every even payment, a second payment for every odd policy.
async fn send_refunds_and_second_payments(addr: &str) {
    for i in 0..PAYMENTS {
        let pol = format!("pol_z{i}");
        if i % 2 == 0 {
            let (id, pay) = (format!("evt_z{i}_4"), format!("pay_z{i}"));
            post(addr, &id, &pay, 4, "payment.refunded", &pol).await;
        } else {
            let (id, second) = (format!("evt_z{i}_again"), format!("pay_z{i}_again"));
            post(addr, &id, &second, 1, "payment.completed", &pol).await;
        }
    }
}

async fn paused_and_resumed(guarantee: Guarantee) {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, &dir.path().join("state"));
    config.kafka.processing_guarantee = guarantee;
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let zombie = spawn_instance(&config, dir.path(), "zombie");
    zombie.wait_assigned(Duration::from_secs(60)).await;
    let sender = sign::paced_lifecycles(ingest.addr(), "z", PAYMENTS, 8, Duration::from_millis(50));
    // Paused mid-stream, with records fetched and queued.
    let (n, _) = kafka::activations_by_policy(broker.bootstrap(), &topics.activations, 15).await;
    assert!(n >= 15, "progress before the pause");
    zombie.signal("STOP");
    let heir = spawn_instance(&config, dir.path(), "heir");
    sender.await.unwrap();
    wait_for(broker.bootstrap(), &topics.activations, "activated", PAYMENTS, || {
        format!("heir:\n{}", heir.log_tail())
    })
    .await;
    // The zombie wakes up with its queue, its open transaction and its old generation.
    zombie.signal("CONT");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let by = events(broker.bootstrap(), &topics.activations).await;
    let (activated, broken) = kept(&by, "activated", guarantee);
    assert!(
        activated == PAYMENTS && broken.is_empty(),
        "{guarantee:?}: each policy activated as promised for a read_committed reader: {activated} \
         kept, broken {broken:?}\n\
         zombie:\n{}\nheir:\n{}",
        zombie.log_tail(),
        heir.log_tail()
    );
    drop(zombie);
    drop(heir);

    // A fresh instance knows only the changelogs: every payment must be where the log
    // left it. A refund cancels its activation (even policies); a second payment of a
    // held policy is a duplicate (odd ones).
    let fresh = spawn_instance(&config, dir.path(), "fresh");
    fresh.wait_assigned(Duration::from_secs(60)).await;
    send_refunds_and_second_payments(&ingest.addr()).await;
    let logs = || format!("fresh:\n{}", fresh.log_tail());
    wait_for(broker.bootstrap(), &topics.activations, "cancelled", PAYMENTS / 2, logs).await;
    let by = wait_for(
        broker.bootstrap(),
        &topics.activations,
        "duplicated",
        PAYMENTS / 2,
        logs,
    )
    .await;
    for kind in ["cancelled", "duplicated"] {
        let (n, broken) = kept(&by, kind, guarantee);
        assert!(
            n == PAYMENTS / 2 && broken.is_empty(),
            "{guarantee:?}: after a restore from the changelogs, {kind} as promised per policy: {n} of {}, \
             broken {broken:?}\n{}",
            PAYMENTS / 2,
            fresh.log_tail()
        );
    }
    ingest.stop().await;
}
