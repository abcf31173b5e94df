//! The processor binary after a crash, with corrupt state, and at shutdown without a
//! broker: a quiet partition's offset still catches up with what sled applied, stored
//! state that does not read back is rebuilt from the log, and SIGTERM ends the process
//! within its grace period whatever the broker does.

use std::time::Duration;

use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{test_config, ChildProcessor, Topics};
use hookstream_tests::{http, ingest, kafka, sign};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_before_the_commit_a_quiet_partition_is_committed_up_to_what_sled_applied() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, &dir.path().join("state"));
    // At least once (exactly once, sled never runs ahead of the commit: what the crash
    // left uncommitted is discarded, crash.rs). No periodic commit before the crash:
    // sled is then ahead of the group.
    config.kafka.processing_guarantee = hookstream_processor::config::Guarantee::AtLeastOnce;
    config.processing.commit_interval = Duration::from_secs(600);
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let first = ChildProcessor::spawn(&config, dir.path());
    for i in 0..6 {
        let (id, pay, pol) = (format!("evt_q{i}"), format!("pay_q{i}"), format!("pol_q{i}"));
        sign::send_event(&ingest.addr(), &id, &pay, None, "payment.completed", Some(&pol)).await;
    }
    for i in 0..6 {
        kafka::wait_for_activation(
            broker.bootstrap(),
            &topics.activations,
            &format!("pol_q{i}"),
            Duration::from_secs(60),
        )
        .await;
    }
    first.kill();
    let before = kafka::committed_and_ends(broker.bootstrap(), &config.kafka.group_id, &topics.raw, 2);
    assert!(
        before.iter().all(|(c, _)| c.is_none()),
        "nothing committed before the crash: {before:?}"
    );

    // Restarted with its state and no new traffic: the group's offsets reach the ends.
    config.processing.commit_interval = Duration::from_millis(200);
    let _second = ChildProcessor::spawn(&config, dir.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = kafka::committed_and_ends(broker.bootstrap(), &config.kafka.group_id, &topics.raw, 2);
        if now.iter().all(|(c, end)| *c == Some(*end)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed offsets did not reach the log ends: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_state_that_does_not_read_back_is_rebuilt_from_the_log() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = test_config(broker.bootstrap(), &topics, &state);
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let mut first = ChildProcessor::spawn(&config, dir.path());
    sign::send_event(&ingest.addr(), "evt_x1", "pay_x", Some(1), "payment.created", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while http::get(&first.admin, "/payments/pay_x").await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "pay_x was not processed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(30)).is_some(), "graceful stop");

    // Garble the payment's stored state (the tree of raw partition 0, key p + payment
    // id + NUL + source).
    {
        let db = sled::open(&state).unwrap();
        let tree = db.open_tree(format!("raw/{}/0", topics.raw)).unwrap();
        let key = b"ppay_x\0paymenthub";
        assert!(
            tree.get(key).unwrap().is_some(),
            "the state is where the store keeps it"
        );
        tree.insert(key, &b"{not json"[..]).unwrap();
        db.flush().unwrap();
    }
    let second = ChildProcessor::spawn(&config, dir.path());
    sign::send_event(
        &ingest.addr(),
        "evt_x2",
        "pay_x",
        Some(2),
        "payment.completed",
        Some("pol_x"),
    )
    .await;
    kafka::wait_for_activation(
        broker.bootstrap(),
        &topics.activations,
        "pol_x",
        Duration::from_secs(90),
    )
    .await;
    let metrics = String::from_utf8_lossy(&http::get(&second.admin, "/metrics").await.body).into_owned();
    assert!(
        metrics.contains("hookstream_processor_corrupt_rebuilds_total 1"),
        "{metrics}"
    );
    ingest.stop().await;
}

/// Start a processor on a broker of its own, wait until it owns its partition, then
/// stop the broker (a crash) so nothing the processor asks of it is ever answered.
async fn processor_without_broker(grace_ms: u64) -> (ChildProcessor, tempfile::TempDir) {
    let broker = Broker::dedicated();
    let topics = Topics::create(broker.bootstrap(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, &dir.path().join("state"));
    config.shutdown_grace = Duration::from_millis(grace_ms);
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let processor = ChildProcessor::spawn(&config, dir.path());
    sign::send_event(
        &ingest.addr(),
        "evt_s1",
        "pay_s",
        None,
        "payment.completed",
        Some("pol_s"),
    )
    .await;
    kafka::wait_for_activation(
        broker.bootstrap(),
        &topics.activations,
        "pol_s",
        Duration::from_secs(60),
    )
    .await;
    ingest.stop().await;
    broker.stop(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    (processor, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_without_a_broker_exits_within_the_grace_period() {
    let (mut processor, _dir) = processor_without_broker(1000).await;
    processor.signal("TERM");
    let status = processor.wait_exit(Duration::from_secs(3));
    assert!(
        status.is_some(),
        "still running 3 s after SIGTERM with a 1 s grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let (mut processor, _dir) = processor_without_broker(60_000).await;
    processor.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    processor.signal("INT");
    let status = processor.wait_exit(Duration::from_secs(5));
    assert!(status.is_some(), "still running 5 s after a second signal");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
