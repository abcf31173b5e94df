//! The processor as a real consumer group: three instances (each with its own state
//! directory) share a 12-partition raw topic while thousands of payments flow; one is
//! killed with SIGKILL and a new one joins mid-stream. Partitions move, the new owners
//! rebuild their state from the log, and still every completed payment has exactly one
//! distinct activation id, and none is lost. Once with each group protocol: classic
//! (cooperative-sticky) and KIP-848 (`group.protocol=consumer`, the broker assigns).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookstream_processor::config::GroupProtocol;
use hookstream_processor::rules::decide::activation_id;
use hookstream_schemas::{decode, DeadLetter, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{spawn_instance, test_config, Topics};
use hookstream_tests::{ingest, kafka, sign};
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
            PolicyEventKind::Cancelled(_) | PolicyEventKind::Duplicated(_) => None,
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

/// Every instance's log under `dir` (`<name>-run/processor-<port>.log`).
fn instance_logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for run in std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().is_dir()) {
        for f in std::fs::read_dir(run.path()).unwrap().flatten() {
            if f.file_name().to_string_lossy().ends_with(".log") {
                out.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_group_three_instances_one_killed_one_joining_keep_one_activation_per_policy() {
    three_instances_one_killed_one_joining(GroupProtocol::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_group_three_instances_one_killed_one_joining_keep_one_activation_per_policy() {
    three_instances_one_killed_one_joining(GroupProtocol::Consumer).await;
}

async fn three_instances_one_killed_one_joining(protocol: GroupProtocol) {
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
    base.kafka.group_protocol = protocol;
    let instance = |name: &str| spawn_instance(&base, &dir, name);
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
    // The group really ran the protocol asked for: librdkafka's `cgrp` debug lines name
    // the requests (KIP-848's heartbeat carries the assignment; classic members join).
    let logs = instance_logs(&dir);
    let (used, unused) = match protocol {
        GroupProtocol::Classic => ("JoinGroup", "ConsumerGroupHeartbeat"),
        GroupProtocol::Consumer => ("ConsumerGroupHeartbeat", "JoinGroup"),
    };
    assert!(
        logs.contains(used) && !logs.contains(unused),
        "{protocol:?}: {used} in the members' logs, {unused} not; logs kept in {}",
        dir.display()
    );
    ingest.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
