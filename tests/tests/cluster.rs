//! Failures only a replicated Kafka has, on three combined broker + controller nodes
//! (replication 3, `min.insync.replicas` 2, as in production):
//! - the node that is both a raw partition's leader and the transaction coordinator of
//!   the processor's payment stage SIGKILLed under load through ingest while the
//!   processor runs: leadership and the coordinator move, nothing answered 200 is lost,
//!   each completed payment's activation is delivered once, and neither ingest nor the
//!   processor needs a restart;
//! - two of the three nodes down (fewer in-sync replicas than `min.insync.replicas`, and
//!   no controller quorum): ingest answers 503 + `Retry-After`, never 200, and 200 again
//!   by itself once they are back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookstream_tests::broker::Broker;
use hookstream_tests::ingest::{scheme_of, secrets_of, wait_ready, ChildIngest};
use hookstream_tests::processor::{self, ChildProcessor, Topics};
use hookstream_tests::providers::{finish, record, retrying_lifecycles, Seen};
use hookstream_tests::{http, sign};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// One cluster at a time: two would be six JVMs and two pipelines on 2 cores, slow
/// enough to measure the machine instead of the failure.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The node that leads `partition` of `topic`, from `bootstrap`'s metadata.
fn leader(bootstrap: &str, topic: &str, partition: i32) -> usize {
    leaders(bootstrap, topic)[usize::try_from(partition).unwrap()]
}

/// Each partition's leader, in partition order.
fn leaders(bootstrap: &str, topic: &str) -> Vec<usize> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = probe.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let t = md.topics().iter().find(|t| t.name() == topic).unwrap();
    let mut ps: Vec<_> = t.partitions().iter().map(|p| (p.id(), p.leader())).collect();
    ps.sort_unstable();
    ps.into_iter()
        .map(|(_, l)| usize::try_from(l).expect("a partition with a leader"))
        .collect()
}

/// The node coordinating `transactional_id`'s transactions: the leader of its
/// `__transaction_state` partition, which the broker picks as Java's
/// `abs(transactionalId.hashCode()) % partitions`.
fn transaction_coordinator(bootstrap: &str, transactional_id: &str) -> usize {
    let hash = transactional_id
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    let state = leaders(bootstrap, "__transaction_state");
    state[usize::try_from(abs).unwrap() % state.len()]
}

/// Wait (60 s at most) until partition `watched` of the raw topic has a leader other than
/// `victim`, asking the node at `survivor`, and `through` holds.
async fn wait_for_failover(survivor: &str, (topic, watched): (&str, i32), victim: usize, through: impl Fn() -> bool) {
    let started = tokio::time::Instant::now();
    while leader(survivor, topic, watched) == victim || !through() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no new leader and traffic within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_raw_leader_and_the_transaction_coordinator_loses_nothing_activates_once() {
    let _one = ONE_CLUSTER.lock().await;
    let broker = Broker::cluster();
    let topics = Topics::create_replicated(broker.bootstrap(), 4, 3).await;
    // Kept on failure (the processor's log is the diagnosis), removed on success.
    let kept = tempfile::Builder::new()
        .prefix("hookstream-cluster-")
        .tempdir()
        .unwrap()
        .keep();
    let ingest = ChildIngest::spawn(
        broker.bootstrap(),
        &topics.raw,
        kept.as_path(),
        |c| c.kafka.ack_deadline = Duration::from_secs(3),
        &[],
    );
    let mut config = processor::test_config(broker.bootstrap(), &topics, &kept.join("state"));
    config.kafka.internal_replication_factor = 3;
    let mut processor = ChildProcessor::spawn(&config, kept.as_path());
    wait_ready(&ingest.addr).await;
    processor.wait_assigned(Duration::from_secs(60)).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let workers = retrying_lifecycles(ingest.addr.clone(), 16, seen.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The payment stage's transactions are coordinated by the victim: its commits fail
    // with the node, and it must find the new coordinator by itself.
    let instance = std::fs::read_to_string(kept.join("state").join("instance-id")).unwrap();
    let txn_id = format!("{}-{}-payments", config.kafka.group_id, instance.trim());
    let victim = transaction_coordinator(broker.bootstrap(), &txn_id);
    let watched = leaders(broker.bootstrap(), &topics.raw)
        .iter()
        .position(|l| *l == victim)
        .map_or(0, |p| i32::try_from(p).unwrap());
    let before_kill = seen.lock().unwrap().acked.len();
    broker.stop_node(victim, false); // SIGKILL
    let killed = tokio::time::Instant::now();
    // Until the watched partition has a new leader and the senders got 100 more answers
    // through.
    let acked_at_kill = seen.lock().unwrap().acked.len();
    let survivor = broker.node_ids().into_iter().find(|n| *n != victim).unwrap();
    let through = || seen.lock().unwrap().acked.len() >= acked_at_kill + 100;
    wait_for_failover(&broker.node_address(survivor), (&topics.raw, watched), victim, through).await;
    let failover = killed.elapsed();
    broker.start_node(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = finish(&stop, workers, &seen).await;
    eprintln!(
        "node {victim} (transaction coordinator, leader of raw partition {watched}) killed: {before_kill} acknowledged before, traffic through a new leader \
         {failover:?} later, {} answers 503/429 in all, {} acknowledged, {} payments completed",
        seen.unavailable,
        seen.acked.len(),
        seen.completed.len()
    );
    assert!(before_kill > 0, "load before the kill");
    assert!(
        seen.other.is_empty(),
        "answers other than 200 and 503/429 + Retry-After: {:?}",
        seen.other
    );

    seen.assert_acknowledged_in(broker.bootstrap(), &topics.raw).await;
    let context = format!(
        "logs kept in {}; the processor's:\n{}",
        kept.display(),
        processor.log_tail()
    );
    seen.assert_each_activation_delivered_once(broker.bootstrap(), &topics.activations, &context)
        .await;
    assert!(
        processor.wait_exit(Duration::ZERO).is_none(),
        "the processor exited instead of riding it out"
    );
    drop((ingest, processor));
    let _ = std::fs::remove_dir_all(&kept);
}

/// One signed `payment.created` with a fresh id, and its answer.
async fn send_one(addr: &str, n: usize) -> Result<http::Reply, http::NoAnswer> {
    let id = format!("evt_isr_{n}");
    let body = sign::payment_body(&id, &format!("pay_isr_{}", n % 7), None, "payment.created", None);
    let h = sign::sign(
        scheme_of("paymenthub"),
        secrets_of("paymenthub")[0],
        &id,
        sign::now(),
        &body,
    );
    http::try_post(addr, "/webhooks/paymenthub", &h, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_nodes_down_means_503_never_200_and_200_again_once_they_return() {
    let _one = ONE_CLUSTER.lock().await;
    let broker = Broker::cluster();
    let topics = Topics::create_replicated(broker.bootstrap(), 3, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let ingest = ChildIngest::spawn(
        broker.bootstrap(),
        &topics.raw,
        dir.path(),
        |c| c.kafka.ack_deadline = Duration::from_secs(2),
        &[],
    );
    wait_ready(&ingest.addr).await;
    let mut n = 0;
    let mut seen = Seen::default();
    for _ in 0..20 {
        n += 1;
        assert!(
            record(&mut seen, &format!("{n}"), send_one(&ingest.addr, n).await),
            "{seen:?}"
        );
    }

    broker.stop_node(2, false);
    broker.stop_node(3, false);
    let mut down = Seen::default();
    let outage = tokio::time::Instant::now();
    // Concurrent senders for 15 s, each request waiting out the ack deadline.
    while outage.elapsed() < Duration::from_secs(15) {
        let answers = futures_util::future::join_all((0..8).map(|i| send_one(&ingest.addr, n + i))).await;
        for (i, a) in answers.into_iter().enumerate() {
            record(&mut down, &format!("{}", n + i), a);
        }
        n += 8;
    }
    eprintln!(
        "two nodes down: {} answers 503/429 + Retry-After, {} 200, other {:?}",
        down.unavailable,
        down.acked.len(),
        down.other
    );
    assert!(
        down.acked.is_empty(),
        "answered 200 with one of three replicas: {:?}",
        down.acked
    );
    assert!(
        down.other.is_empty(),
        "answers other than 503/429 + Retry-After: {:?}",
        down.other
    );
    assert!(down.unavailable > 0, "requests were answered during the outage");

    broker.start_node(2);
    broker.start_node(3);
    let back = tokio::time::Instant::now();
    let mut after = Seen::default();
    loop {
        n += 1;
        if record(&mut after, &format!("{n}"), send_one(&ingest.addr, n).await) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(90),
            "no 200 within 90 s of the nodes' return: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("200 again {:?} after the two nodes were started", back.elapsed());
    assert!(
        after.other.is_empty(),
        "answers other than 503/429 + Retry-After: {:?}",
        after.other
    );
    drop(ingest);
}
