//! The processor as a real consumer group: three instances (each with its own state
//! directory) share a 12-partition raw topic while thousands of payments flow; one is
//! killed with SIGKILL and a new one joins mid-stream. Partitions move, the new owners
//! rebuild their state from the log, and still every completed payment has exactly one
//! distinct activation id, and none is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookstream_processor::decide::activation_id;
use hookstream_schemas::{decode, DeadLetter, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{test_config, ChildProcessor, RunningProcessor, Topics};
use hookstream_tests::{ingest, kafka, sign};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

const PAYMENTS: usize = 1500;

/// The activation ids per policy in `topic`, read until `policies` distinct policies have
/// one or `timeout` passes (the caller asserts on what arrived).
async fn activation_ids(
    bootstrap: &str,
    topic: &str,
    policies: usize,
    timeout: Duration,
) -> BTreeMap<String, BTreeSet<String>> {
    let activated =
        |m: &rdkafka::message::OwnedMessage| match decode::<PolicyEvent>(m.payload().unwrap()).unwrap().event {
            PolicyEventKind::Activated(x) => Some((x.policy_id, x.activation_id)),
            PolicyEventKind::Cancelled(_) => None,
        };
    let mut seen = BTreeSet::new();
    let records = kafka::read_until(bootstrap, topic, timeout, |r| {
        if let Some((policy, _)) = r.last().and_then(activated) {
            seen.insert(policy);
        }
        seen.len() >= policies
    })
    .await;
    let mut by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (policy, id) in records.iter().filter_map(activated) {
        by.entry(policy).or_default().insert(id);
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_one_joining_keep_exactly_one_activation_per_policy() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 12).await;
    // Kept on failure (the instances' logs and state are the diagnosis), removed on success.
    let dir = tempfile::Builder::new()
        .prefix("hookstream-group-")
        .tempdir()
        .unwrap()
        .keep();
    let mut base = test_config(broker.bootstrap(), &topics, &dir.join("unused"));
    // Every JoinGroup, SyncGroup and assignment in the instances' logs: when this fails,
    // the kept directory shows who owned which partition when.
    base.kafka.debug = "cgrp".into();
    // The local broker's coordinator can leave a dead member's partitions without an
    // owner (README > Local broker); the stall guard makes the group assign them again.
    base.processing.stall_repair_after_ms = 15_000;
    let instance = |name: &str| {
        let mut c = base.clone();
        c.state_dir = dir.join(name);
        let d = dir.join(format!("{name}-run"));
        std::fs::create_dir_all(&d).unwrap();
        ChildProcessor::spawn(&c, &d)
    };
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let a = instance("a");
    let b = instance("b");
    let c = instance("c");

    // Traffic: every payment's three events in order, 20 payments at a time, paced.
    let sender = sign::paced_lifecycles(ingest.addr(), "g", PAYMENTS, 20, Duration::from_millis(40));

    tokio::time::sleep(Duration::from_secs(3)).await;
    b.kill();
    let d = instance("d");
    sender.await.unwrap();

    let by = activation_ids(
        broker.bootstrap(),
        &topics.activations,
        PAYMENTS,
        Duration::from_secs(120),
    )
    .await;
    let missing: Vec<_> = (0..PAYMENTS)
        .map(|i| format!("pol_g{i}"))
        .filter(|p| !by.contains_key(p))
        .collect();
    assert!(
        missing.is_empty(),
        "lost activations: {} e.g. {:?}; the instances' logs and state are kept in {}",
        missing.len(),
        &missing[..missing.len().min(5)],
        dir.display()
    );
    // Every webhook was valid and in order: nothing may have been dead-lettered (a
    // rebuild that missed records would show up here as sequence-gap timeouts).
    let dead = kafka::read_records(broker.bootstrap(), &topics.dlq, 1, Duration::from_secs(3)).await;
    let reasons: Vec<_> = dead
        .iter()
        .map(|m| decode::<DeadLetter>(m.payload().unwrap()).unwrap().reason)
        .collect();
    assert!(
        reasons.is_empty(),
        "dead letters: {reasons:?}; logs kept in {}",
        dir.display()
    );
    for (pol, ids) in &by {
        let i = pol.trim_start_matches("pol_g");
        let want = BTreeSet::from([activation_id(pol, "paymenthub", &format!("evt_g{i}_3"))]);
        assert_eq!(ids, &want, "{pol}: one distinct, deterministic activation id");
    }
    drop((a, c, d));
    ingest.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A member that holds partitions and never processes them looks, from outside, like a
/// partition without an owner: the stall guard makes the instance leave and rejoin the
/// group, its own partitions keep being processed through that, and once the idle member
/// is gone every payment is activated exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_nobody_processes_makes_an_instance_rejoin_and_nothing_is_lost() {
    const N: usize = 40;
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, dir.path());
    config.processing.stall_repair_after_ms = 2_000;
    let idle: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", &config.kafka.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    idle.subscribe(&[&topics.raw]).unwrap();
    let idle = std::sync::Arc::new(idle);
    let stop_idle = tokio_util::sync::CancellationToken::new();
    let idle_task = {
        let (idle, stop) = (idle.clone(), stop_idle.clone());
        // Receives (so it takes part in rebalances) and throws everything away.
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = idle.recv() => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let processor = RunningProcessor::start(config).await;
    sign::paced_lifecycles(ingest.addr(), "s", N, 10, Duration::from_millis(10))
        .await
        .unwrap();

    let repairs = || async {
        let m =
            String::from_utf8_lossy(&hookstream_tests::http::get(&processor.admin, "/metrics").await.body).into_owned();
        m.lines()
            .find_map(|l| l.strip_prefix("hookstream_processor_stall_repairs_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while repairs().await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        repairs().await >= 1,
        "the idle member's lagging partitions must trigger a repair"
    );

    stop_idle.cancel();
    idle_task.await.unwrap();
    drop(idle); // closes the consumer: it leaves the group and its partitions move
    let by = activation_ids(broker.bootstrap(), &topics.activations, N, Duration::from_secs(60)).await;
    assert_eq!(by.len(), N, "every payment activated once the idle member left");
    assert!(
        by.values().all(|ids| ids.len() == 1),
        "one distinct activation id per policy"
    );
    processor.stop().await;
    ingest.stop().await;
}
