//! The partition loop against the in-memory ports (`memory.rs`) and sled in memory:
//! commit order, retries, reconcile and rebuild, holes in a delivery, stopping.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::io::Incoming;
use super::memory::{Call, Fail, Memory, RAW, RAW_CHANGELOG, REQUESTS, REQUESTS_CHANGELOG};
use super::worker::Worker;
use super::{Context, Settings, Stage};
use crate::config::ProcessingConfig;
use crate::metrics::Metrics;
use crate::rules::decide::activation_id;
use crate::store::{Flusher, Store};
use crate::trace::RecordTracer;

pub(super) fn context(memory: &Memory, store: &Store) -> Arc<Context<Memory>> {
    context_with(memory, store, |_| {})
}

pub(super) fn context_with(
    memory: &Memory,
    store: &Store,
    tweak: impl FnOnce(&mut ProcessingConfig),
) -> Arc<Context<Memory>> {
    let mut processing = ProcessingConfig {
        max_backoff: Duration::from_millis(20),
        ..ProcessingConfig::default()
    };
    tweak(&mut processing);
    Arc::new(Context {
        settings: Settings {
            raw_topic: RAW.into(),
            requests_topic: REQUESTS.into(),
            payments_changelog: RAW_CHANGELOG.into(),
            policies_changelog: REQUESTS_CHANGELOG.into(),
            fold: super::fold_settings(&processing, Default::default()),
            processing,
            session_timeout: Duration::from_secs(10),
        },
        store: store.clone(),
        flusher: Flusher::start(store),
        backend: memory.clone(),
        metrics: Metrics::new(),
        tracer: RecordTracer::default(),
        rebuilds: tokio::sync::Semaphore::new(1),
        holes: Default::default(),
        gates: Default::default(),
    })
}

/// Run a payment-stage worker of partition 0 over `delivered` until its queue closes.
pub(super) async fn run(memory: &Memory, store: &Store, delivered: Vec<Incoming>) {
    run_stage(Stage::Payments, memory, store, delivered).await;
}

/// Run a worker of `stage`'s partition 0 over `delivered` until its queue closes.
pub(super) async fn run_stage(stage: Stage, memory: &Memory, store: &Store, delivered: Vec<Incoming>) {
    run_with(stage, context(memory, store), delivered).await;
}

pub(super) async fn run_with(stage: Stage, cx: Arc<Context<Memory>>, delivered: Vec<Incoming>) {
    let worker = Worker::new(cx, stage, 0).expect("worker");
    let (tx, rx) = mpsc::channel(delivered.len().max(1));
    for m in delivered {
        tx.send(m).await.expect("queue");
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), worker.run(rx, CancellationToken::new()))
        .await
        .expect("the worker finishes its queue");
}

/// What the payment stage sends for a completed payment: an activation request.
pub(super) fn activated(policy: &str, event_id: &str) -> String {
    format!("request:Activate:{}", activation_id(policy, "src", event_id))
}

pub(super) fn applied(store: &Store) -> Option<i64> {
    store
        .partition("raw", 0)
        .and_then(|p| p.applied_offset())
        .expect("store")
}

#[tokio::test]
async fn outputs_are_acknowledged_before_the_offset_is_committed() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    let b = memory.append("pay2", "e2", 1, "payment.completed", "pol2");
    run(&memory, &store, vec![a, b]).await;
    let calls = memory.state().calls.clone();
    let first_commit = calls.iter().position(|c| matches!(c, Call::Commit { .. }));
    let last_send = calls.iter().rposition(|c| matches!(c, Call::Sent(_)));
    assert!(last_send < first_commit, "{calls:?}");
    assert_eq!(
        calls.last(),
        Some(&Call::Commit { next: 2, sync: true }),
        "the hand-over commit"
    );
    assert_eq!(memory.sent(), vec![activated("pol1", "e1"), activated("pol2", "e2")]);
    assert_eq!(applied(&store), Some(1));
}

#[tokio::test]
async fn a_retry_sends_everything_after_the_failed_output_again_in_order() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let batch = vec![
        memory.append("pay1", "e1", 1, "payment.completed", "pol1"),
        memory.append("pay2", "e2", 1, "payment.completed", "pol2"),
        memory.append("pay3", "e3", 1, "payment.completed", "pol3"),
    ];
    // The second of the batch's three outputs is not acknowledged the first time.
    memory.state().failures.push_back(Fail::UnavailableAt(1));
    run(&memory, &store, batch).await;
    let (a, b, c) = (
        activated("pol1", "e1"),
        activated("pol2", "e2"),
        activated("pol3", "e3"),
    );
    assert_eq!(
        memory.sent(),
        vec![a, c.clone(), b, c],
        "the third goes again after the second: the last copies are in order"
    );
}

#[tokio::test]
async fn a_transient_failure_sends_the_same_ids_again_and_a_refusal_becomes_a_dead_letter() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    memory.state().failures.extend([Fail::Unavailable, Fail::Unavailable]);
    run(&memory, &store, vec![a]).await;
    assert_eq!(
        memory.sent(),
        vec![activated("pol1", "e1")],
        "sent once, after two failures"
    );

    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    memory.state().failures.push_back(Fail::Refused);
    run(&memory, &store, vec![a]).await;
    assert_eq!(
        memory.sent(),
        vec!["dead:processing_error"],
        "refused for good: a dead letter instead"
    );
    assert_eq!(applied(&store), Some(0), "and the partition goes on");
}

#[tokio::test]
async fn an_empty_store_is_rebuilt_below_the_committed_offset_without_publishing() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    memory.append("pay1", "e1", 1, "payment.created", "pol1");
    memory.append("pay1", "e2", 2, "payment.completed", "pol1");
    let c = memory.append("pay1", "e3", 3, "payment.refunded", "pol1");
    memory.state().committed.insert((RAW.into(), 0), 2);
    run(&memory, &store, vec![c]).await;
    assert_eq!(memory.state().opened, vec![None], "rebuilt from the start of the log");
    let sent = memory.sent();
    assert_eq!(sent.len(), 1, "only the live record's output: {sent:?}");
    assert!(
        sent[0].starts_with("request:Cancel:"),
        "the refund asks to cancel the activation rebuilt from the log"
    );
    assert_eq!(applied(&store), Some(2));
}

#[tokio::test]
async fn sled_ahead_of_the_group_skips_what_it_applied_and_moves_the_group_up() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    let b = memory.append("pay2", "e2", 1, "payment.completed", "pol2");
    run(&memory, &store, vec![a.clone(), b.clone()]).await;
    // The commits never reached the group (a crash after sled was flushed): the group
    // hands the partition over from the start of the log.
    {
        let mut st = memory.state();
        st.committed.remove(&(RAW.into(), 0));
        st.calls.clear();
    }
    run(&memory, &store, vec![a, b]).await;
    assert!(memory.sent().is_empty(), "nothing is published twice");
    assert_eq!(memory.state().calls.last(), Some(&Call::Commit { next: 2, sync: true }));
}

#[tokio::test]
async fn a_group_moved_back_below_the_hand_over_decides_and_publishes_again() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    run(&memory, &store, vec![a.clone()]).await;
    {
        let mut st = memory.state();
        st.committed.insert((RAW.into(), 0), 0); // processor replay --from-beginning
        st.calls.clear();
    }
    run(&memory, &store, vec![a]).await;
    assert_eq!(memory.sent(), vec![activated("pol1", "e1")], "the same id again");
}

#[tokio::test]
async fn a_hole_in_a_delivery_is_read_from_the_log_first() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    memory.append("pay2", "e2", 1, "payment.completed", "pol2");
    let c = memory.append("pay3", "e3", 1, "payment.completed", "pol3");
    run(&memory, &store, vec![a, c]).await;
    assert!(memory.state().opened.contains(&Some(1)), "offset 1 read from the log");
    let expected = vec![
        activated("pol1", "e1"),
        activated("pol2", "e2"),
        activated("pol3", "e3"),
    ];
    assert_eq!(memory.sent(), expected, "in offset order, each once");
}

#[tokio::test]
async fn a_stopped_worker_commits_nothing_it_did_not_persist() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    memory.state().failures.extend([Fail::Unavailable; 1000]);
    let worker = Worker::new(context(&memory, &store), Stage::Payments, 0).expect("worker");
    let (tx, rx) = mpsc::channel(4);
    tx.send(a).await.expect("queue");
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(rx, stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .expect("worker");
    assert!(memory.state().calls.is_empty(), "{:?}", memory.state().calls);
    assert_eq!(applied(&store), None);
}

#[tokio::test]
async fn the_policy_stage_gives_the_policy_to_the_first_request_and_announces_the_second() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let a = memory.append("pay1", "e1", 1, "payment.completed", "pol");
    let b = memory.append_from("other", "pay1", "e2", 1, "payment.completed", "pol");
    run(&memory, &store, vec![a, b]).await;
    let requests = memory.records(REQUESTS);
    assert_eq!(
        requests.len(),
        2,
        "two payments, two requests: the namesake from another source is its own payment"
    );
    memory.state().calls.clear();
    run_stage(Stage::Policies, &memory, &store, requests.clone()).await;
    let sent = memory.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0], format!("activated:{}", activation_id("pol", "src", "e1")));
    assert!(sent[1].starts_with("duplicate:"), "{sent:?}");
    assert_eq!(memory.state().calls.last(), Some(&Call::Commit { next: 2, sync: true }));
    // The stage's state is its own: wiped, it is rebuilt from the requests and decides
    // nothing anew for records below the committed offset.
    let fresh = Store::temporary().expect("store");
    memory.state().calls.clear();
    run_stage(Stage::Policies, &memory, &fresh, requests).await;
    assert!(memory.sent().is_empty(), "rebuilt, not re-published");
    let (_, st) = fresh.find_policy(REQUESTS, "pol").expect("store").expect("policy");
    assert_eq!(st.holder().map(|h| h.source.as_str()), Some("src"));
}

/// A dedup window of 10 s, at most `ahead` seconds ahead per record, in record time.
fn short_window(batch: usize, ahead: u64) -> impl FnOnce(&mut ProcessingConfig) {
    move |p: &mut ProcessingConfig| {
        p.dedup_window = Duration::from_secs(10);
        p.max_record_time_ahead = Duration::from_secs(ahead);
        p.max_batch_records = batch;
    }
}

#[tokio::test]
async fn the_same_log_gives_the_same_outputs_and_state_whatever_the_batch_size() {
    let mut results = Vec::new();
    for batch in [1, 500] {
        let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
        // e1; another payment's event past the 10 s window; e1 again just after it.
        let log = vec![
            memory.append_at(0, "src", "pay1", "e1", 1, "payment.completed", "pol1"),
            memory.append_at(20_000, "src", "pay2", "e2", 1, "payment.created", "pol2"),
            memory.append_at(21_000, "src", "pay1", "e1", 1, "payment.completed", "pol1"),
        ];
        run_with(
            Stage::Payments,
            context_with(&memory, &store, short_window(batch, 60)),
            log,
        )
        .await;
        let mut state = store.partition(RAW, 0).expect("store").dump();
        // Where the state is in the changelog depends on how many batches wrote it.
        state.retain(|(k, _)| k.as_slice() != b"m:changelog");
        results.push((memory.sent(), state));
    }
    assert_eq!(results[0].0, results[1].0, "outputs of batch size 1 and 500");
    assert_eq!(results[0].1, results[1].1, "state of batch size 1 and 500");
    assert_eq!(
        results[0].0[1], "dead:stale",
        "e1 again past the window is no longer a known duplicate: its sequence is stale"
    );
}

#[tokio::test]
async fn a_far_future_record_time_does_not_expire_other_keys() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let t = 1_764_000_000_000; // 2025-11-24
    let log = vec![
        memory.append_at(t, "src", "pay1", "e1", 1, "payment.completed", "pol1"),
        memory.append_at(i64::MAX / 2, "src", "pay2", "e2", 1, "payment.created", "pol2"),
        // The provider's retry of e1, a second later: still a duplicate.
        memory.append_at(t + 1_000, "src", "pay1", "e1", 1, "payment.completed", "pol1"),
    ];
    run_with(Stage::Payments, context_with(&memory, &store, short_window(1, 2)), log).await;
    assert_eq!(
        memory.sent(),
        vec![activated("pol1", "e1")],
        "the retry is a duplicate, not stale"
    );
    let clock = store.partition(RAW, 0).and_then(|p| p.max_ts()).expect("store");
    assert_eq!(
        clock,
        Some(t + 2_000),
        "the far-future time moved the clock by 2 s only"
    );
}

#[tokio::test]
async fn a_hole_in_the_log_stops_the_partition_until_it_is_acknowledged() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let first = vec![
        memory.append("pay1", "e1", 1, "payment.completed", "pol1"),
        memory.append("pay2", "e2", 1, "payment.completed", "pol2"),
    ];
    run(&memory, &store, first).await;
    // Two more records, then both gone from the log (retention, deleted records).
    memory.append("pay3", "e3", 1, "payment.completed", "pol3");
    memory.append("pay4", "e4", 1, "payment.completed", "pol4");
    let after = memory.append("pay5", "e5", 1, "payment.completed", "pol5");
    memory.state().log_start.insert((RAW.into(), 0), 4);
    memory.state().calls.clear();

    let cx = context(&memory, &store);
    let holes = cx.holes.clone();
    let worker = Worker::new(cx, Stage::Payments, 0).expect("worker");
    let (tx, rx) = mpsc::channel(4);
    tx.send(after).await.expect("queue");
    drop(tx);
    let task = tokio::spawn(worker.run(rx, CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let waiting = holes.list();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!((waiting[0].applied, waiting[0].log_start), (1, 4));
    assert!(
        memory.sent().is_empty(),
        "nothing decided past the hole before it is acknowledged"
    );
    assert!(holes.acknowledge(RAW, 0));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("goes on once acknowledged")
        .expect("worker");
    assert_eq!(memory.sent(), vec![activated("pol5", "e5")], "from the log start on");
    assert!(holes.list().is_empty());
    let ack = store
        .partition(RAW, 0)
        .and_then(|p| p.hole_acknowledged())
        .expect("store");
    assert_eq!(ack, Some(4), "remembered, so a restart does not ask again");
}
