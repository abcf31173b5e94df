//! A hole in the raw log on the real broker: records above a partition's state deleted
//! (DeleteRecords, as retention would) while no processor ran. The processor refuses to
//! go on for that partition, loudly, until an operator acknowledges the hole — even when
//! its state directory was lost as well. And a replay over a log that no longer starts
//! at 0 keeps what the state remembers of the records retention deleted.

use std::time::Duration;

use hookstream_processor::cli::replay::{self, ReplayFrom};
use hookstream_schemas::{decode, PolicyEvent, PolicyEventKind};
use hookstream_tests::broker::Broker;
use hookstream_tests::pipeline::{Event, Pipeline, WAIT};
use hookstream_tests::processor::{test_config, RunningProcessor, Topics};
use hookstream_tests::{http, ingest, kafka, sign};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::{Message, Offset, TopicPartitionList};

/// Delete the records of `topic`'s partition 0 below `offset`, as retention would.
async fn delete_below(bootstrap: &str, topic: &str, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut below = TopicPartitionList::new();
    below.add_partition_offset(topic, 0, Offset::Offset(offset)).unwrap();
    admin
        .delete_records(
            &below,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("the broker deletes records (DeleteRecords)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_the_raw_log_is_refused_until_acknowledged() {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 1).await;
    let state = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, state.path());
    // Acknowledging a hole accepts data loss: it takes the admin token.
    let secrets = tempfile::tempdir().unwrap();
    config.admin_token_file = secrets.path().join("admin-token");
    std::fs::write(&config.admin_token_file, "s3cret-admin-token\n").unwrap();
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let addr = ingest.addr();

    let processor = RunningProcessor::start(config.clone()).await;
    sign::send_event(&addr, "h1", "pay_h1", None, "payment.completed", Some("pol_h1")).await;
    kafka::wait_for_activation(
        broker.bootstrap(),
        &topics.activations,
        "pol_h1",
        Duration::from_secs(60),
    )
    .await;
    processor.stop().await;

    // While no processor runs: two more webhooks, the first of them then deleted.
    sign::send_event(&addr, "h2", "pay_h2", None, "payment.completed", Some("pol_h2")).await;
    sign::send_event(&addr, "h3", "pay_h3", None, "payment.completed", Some("pol_h3")).await;
    delete_below(broker.bootstrap(), &topics.raw, 2).await;

    // The state directory is lost too: the state restored from the changelog still
    // knows where it was, so the hole is found all the same.
    std::fs::remove_dir_all(state.path()).unwrap();
    let processor = RunningProcessor::start(config).await;
    let not_ready = http::poll(&processor.admin, "/readyz", |r| r.status == 503).await;
    let v = not_ready.json();
    assert_eq!(v["holes"][0]["applied"], 0, "{v:#}");
    assert_eq!(v["holes"][0]["log_start"], 2, "{v:#}");
    let metrics = String::from_utf8_lossy(&http::get(&processor.admin, "/metrics").await.body).into_owned();
    assert!(metrics.contains("hookstream_processor_partition_holes 1"), "{metrics}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = kafka::read_records(broker.bootstrap(), &topics.activations, 2, Duration::from_secs(2)).await;
    assert_eq!(
        early.len(),
        1,
        "nothing decided past the hole before it is acknowledged"
    );

    let path = format!("/holes/{}/0/acknowledge", topics.raw);
    let r = http::post(&processor.admin, &path, &[], Vec::new()).await;
    assert_eq!(r.status, 401, "no token: {}", String::from_utf8_lossy(&r.body));
    let wrong = [("authorization".to_owned(), "Bearer s3cret-admin-tokem".to_owned())];
    let r = http::post(&processor.admin, &path, &wrong, Vec::new()).await;
    assert_eq!(r.status, 401, "a wrong token: {}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        http::get(&processor.admin, "/holes").await.json()["holes"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "still waiting"
    );
    let token = [("authorization".to_owned(), "Bearer s3cret-admin-token".to_owned())];
    let r = http::post(&processor.admin, &path, &token, Vec::new()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    kafka::wait_for_activation(
        broker.bootstrap(),
        &topics.activations,
        "pol_h3",
        Duration::from_secs(60),
    )
    .await;
    http::poll(&processor.admin, "/readyz", |r| r.status == 200).await;
    let all = kafka::read_records(broker.bootstrap(), &topics.activations, 3, Duration::from_secs(3)).await;
    assert_eq!(all.len(), 2, "pol_h2's record is gone: only h1 and h3 activate");
    // Ids in paths are percent-decoded.
    let v = http::get(&processor.admin, "/payments/pay%5Fh3").await;
    assert_eq!(
        (v.status.as_u16(), v.json()["payment_id"].clone()),
        (200, "pay_h3".into())
    );
    processor.stop().await;
    ingest.stop().await;
}

/// A payment decided long ago (its record since deleted by retention) and a recent one;
/// `processor replay --from-beginning` then moves the group back to the log's start, not
/// to 0. The replay keeps the state (the old payment's refund still cancels its policy),
/// decides the retained records again (the recent activation is sent again, same id) and
/// stops at no hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_over_a_log_that_no_longer_starts_at_0_keeps_the_older_state() {
    let mut p = Pipeline::start(1).await;
    p.send(Event::completed("pay_old").policy("pol_old")).await;
    p.wait_for_activation("pol_old").await;
    // Retention deletes the old payment's record.
    let (_, end) = kafka::committed_and_ends(p.bootstrap(), &p.config.kafka.group_id, &p.topics.raw, 1)[0];
    delete_below(p.bootstrap(), &p.topics.raw, end).await;
    p.send(Event::completed("pay_new").policy("pol_new")).await;
    p.wait_for_activation("pol_new").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.stop_processor().await;

    let r = replay::run(&p.config.kafka, &ReplayFrom::Beginning, false)
        .await
        .unwrap();
    assert_eq!((r[0].log_start, r[0].reset_to), (end, end), "{r:?}");
    p.start_processor().await;
    let again = kafka::read_records(p.bootstrap(), &p.topics.activations, 3, WAIT).await;
    let ids: Vec<String> = again
        .iter()
        .filter_map(|m| match decode::<PolicyEvent>(m.payload()?).ok()?.event {
            PolicyEventKind::Activated(a) if a.policy_id == "pol_new" => Some(a.activation_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2, "the retained completion is decided again: {ids:?}");
    assert_eq!(ids[0], ids[1], "with the same activation id");
    p.send(Event::refunded("pay_old").policy("pol_old")).await;
    let cancels_old = |all: &[rdkafka::message::OwnedMessage]| {
        all.iter().any(|m| {
            matches!(decode::<PolicyEvent>(m.payload().unwrap_or_default()).map(|e| e.event),
                Ok(PolicyEventKind::Cancelled(c)) if c.policy_id == "pol_old")
        })
    };
    let read = kafka::read_until(p.bootstrap(), &p.topics.activations, WAIT, cancels_old).await;
    assert!(
        cancels_old(&read),
        "the refund of the payment whose record is gone cancels its policy"
    );
    assert_eq!(
        http::get(p.admin(), "/holes").await.json()["holes"],
        serde_json::json!([])
    );
    p.stop().await;
}
