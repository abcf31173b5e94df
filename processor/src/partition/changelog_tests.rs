//! The partition loop with its changelog, in memory: state that outlives the input
//! log and the local store, a batch whose writer stopped half-way, and state that is
//! forgotten when its time is past.

use super::memory::{Memory, RAW, RAW_CHANGELOG};
use super::tests::{activated, applied, context_with, run, run_with};
use super::worker::Worker;
use super::Stage;
use crate::rules::model::{EventType, PaymentState};
use crate::store::changelog::META;
use crate::store::{Entry, Store};

#[tokio::test]
async fn a_refund_cancels_after_the_store_is_wiped_and_the_completion_is_gone_from_the_log() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    run(&memory, &store, vec![completed]).await;
    assert_eq!(memory.sent(), vec![activated("pol1", "e1")]);
    // Retention removed the completion; the state directory is lost.
    memory.state().log_start.insert((RAW.into(), 0), 1);
    let refund = memory.append("pay1", "e2", 2, "payment.refunded", "pol1");
    let fresh = Store::temporary().expect("store");
    memory.state().calls.clear();
    run(&memory, &fresh, vec![refund]).await;
    let sent = memory.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].starts_with("request:Cancel:"), "{sent:?}");
    assert_eq!(applied(&fresh), Some(1));
}

#[tokio::test]
async fn entries_after_the_last_meta_entry_are_not_restored() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    run(&memory, &store, vec![completed]).await;
    // A writer stopped half-way through the next batch: its entry, no meta entry.
    let mut refunded = PaymentState::new("src", "pay1");
    refunded.status = Some(EventType::Refunded);
    let tail = Entry {
        key: [b"p".as_slice(), refunded.key().as_bytes()].concat(),
        value: Some(serde_json::to_vec(&refunded).expect("json")),
    };
    {
        let log = memory.records(RAW_CHANGELOG);
        assert_eq!(log.last().and_then(|m| m.record.key.clone()).as_deref(), Some(META));
    }
    crate::partition::io::Changelog::append(&memory, RAW_CHANGELOG, 0, Some(1), &[tail])
        .await
        .expect("append");
    let fresh = Store::temporary().expect("store");
    run(&memory, &fresh, vec![]).await;
    let restored = fresh
        .partition(RAW, 0)
        .and_then(|p| p.payment(&refunded.key()))
        .expect("store")
        .expect("payment");
    assert_eq!(
        restored.status,
        Some(EventType::Completed),
        "the unfinished batch is ignored"
    );
    assert_eq!(applied(&fresh), Some(0));
}

/// A log longer than the dedup window (10 s of record time here): 200 payments created
/// a second apart; `pay_keep` completed at 0 s and refunded at 50 s, within the refund
/// window (60 s); `pay_late` completed at 1 s and refunded at 150 s, after it.
fn long_log(memory: &Memory) -> Vec<super::io::Incoming> {
    let mut log = vec![
        memory.append_at(0, "src", "pay_keep", "k1", 1, "payment.completed", "pol_keep"),
        memory.append_at(1_000, "src", "pay_late", "l1", 1, "payment.completed", "pol_late"),
    ];
    for i in 0..200 {
        let at = 2_000 + i * 1_000;
        log.push(memory.append_at(
            at,
            "src",
            &format!("pay{i}"),
            &format!("e{i}"),
            1,
            "payment.created",
            "pol",
        ));
        if at == 50_000 {
            log.push(memory.append_at(at, "src", "pay_keep", "k2", 2, "payment.refunded", "pol_keep"));
        }
        if at == 150_000 {
            log.push(memory.append_at(at, "src", "pay_late", "l2", 2, "payment.refunded", "pol_late"));
        }
    }
    log
}

fn windows(batch: usize) -> impl FnOnce(&mut crate::config::ProcessingConfig) {
    move |p| {
        p.dedup_window = std::time::Duration::from_secs(10);
        p.refund_window = std::time::Duration::from_secs(60);
        p.max_batch_records = batch;
    }
}

#[tokio::test]
async fn state_stays_flat_over_a_log_longer_than_the_dedup_window_and_a_refund_within_its_window_cancels() {
    let mut results = Vec::new();
    for batch in [1, 500] {
        let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
        let log = long_log(&memory);
        run_with(Stage::Payments, context_with(&memory, &store, windows(batch)), log).await;
        let mut state = store.partition(RAW, 0).expect("store").dump();
        state.retain(|(k, _)| k.as_slice() != b"m:changelog");
        let tombstones = memory
            .records(RAW_CHANGELOG)
            .iter()
            .filter(|m| m.record.value.is_none() && m.record.key.as_deref().is_some_and(|k| k[0] == b'p'))
            .count();
        results.push((memory.sent(), state, tombstones));
    }
    let (sent, state, tombstones) = &results[0];
    let payments = state.iter().filter(|(k, _)| k[0] == b'p').count();
    let dedup = state.iter().filter(|(k, _)| k[0] == b'd').count();
    assert!(payments <= 12, "payments kept: {payments} of 202");
    assert!(dedup <= 12, "dedup keys kept: {dedup} of 204");
    assert!(
        *tombstones >= 180,
        "evicted payments are tombstones in the changelog: {tombstones}"
    );
    let cancels: Vec<_> = sent.iter().filter(|s| s.starts_with("request:Cancel:")).collect();
    assert_eq!(
        cancels.len(),
        1,
        "pay_keep's refund cancels, pay_late's comes too late: {sent:?}"
    );
    assert!(cancels[0].ends_with(&activation_id_of("pol_keep", "k1")), "{sent:?}");
    let (a, b) = (&results[0], &results[1]);
    assert_eq!(a.0, b.0, "batch size 1 and 500 give the same outputs");
    let keys = |s: &[(Vec<u8>, Vec<u8>)]| {
        s.iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&a.1), keys(&b.1), "batch size 1 and 500 keep the same keys");
    assert_eq!(a.1, b.1, "batch size 1 and 500 give the same state");
    // (Not the same changelog: a state created and evicted within one batch of 500 was
    // never written, so it needs no tombstone.)
}

fn activation_id_of(policy: &str, event_id: &str) -> String {
    crate::rules::decide::activation_id(policy, "src", event_id)
}

/// At least once, a batch whose outputs were never acknowledged (the requests topic
/// refusing for a while) leaves nothing in the changelog when its writer stops: a
/// later batch's meta entry then cannot restore the unsent batch's dedup entry, which
/// would make the completion a duplicate and lose its activation for good.
#[tokio::test]
async fn a_batch_whose_outputs_were_not_acknowledged_logs_no_entry() {
    use super::memory::Fail;
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    memory.state().failures.extend([Fail::Unavailable; 1000]);
    let worker = Worker::new(super::tests::context(&memory, &store), Stage::Payments, 0).expect("worker");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(completed.clone()).await.expect("queue");
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(rx, stop.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.cancel();
    task.await.expect("worker");
    assert!(
        memory.records(RAW_CHANGELOG).iter().all(|m| m
            .record
            .key
            .as_deref()
            .and_then(crate::store::changelog::claimed_epoch)
            .is_some()),
        "no changelog entry but the worker's claim before the outputs are acknowledged"
    );
    // The requests topic accepts again; a fresh instance decides the completion anew.
    memory.state().failures.clear();
    let fresh = Store::temporary().expect("store");
    run(&memory, &fresh, vec![completed]).await;
    assert_eq!(memory.sent(), vec![activated("pol1", "e1")]);
}

/// A changelog value that passes the restore's check (the fields its indexes need) but
/// not the fold's full parse: restoring it again cannot help, so the partition's
/// changelog is voided and its state rebuilt from the input log, instead of restoring
/// the same value forever.
#[tokio::test]
async fn a_changelog_value_only_the_fold_cannot_read_is_rebuilt_from_the_log_once() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    run(&memory, &store, vec![completed]).await;
    let pay = PaymentState::new("src", "pay1");
    let bad = Entry {
        key: [b"p".as_slice(), pay.key().as_bytes()].concat(),
        value: Some(br#"{"held":{},"status":"no-such-status"}"#.to_vec()),
    };
    let meta = Entry {
        key: META.to_vec(),
        value: Some(br#"{"applied":0,"max_ts":1000}"#.to_vec()),
    };
    crate::partition::io::Changelog::append(&memory, RAW_CHANGELOG, 0, Some(1), &[bad, meta])
        .await
        .expect("append");
    let refund = memory.append("pay1", "e2", 2, "payment.refunded", "pol1");
    memory.state().calls.clear();
    let fresh = Store::temporary().expect("store");
    run(&memory, &fresh, vec![refund]).await;
    let sent = memory.sent();
    assert!(
        sent.iter().any(|s| s.starts_with("request:Cancel:")),
        "rebuilt from the log, the refund cancels: {sent:?}"
    );
}

/// A payment-stage worker of partition 0 running over `record`, its queue then closed.
fn spawn_worker(
    cx: std::sync::Arc<super::Context<Memory>>,
    record: super::io::Incoming,
) -> tokio::task::JoinHandle<()> {
    let worker = Worker::new(cx, Stage::Payments, 0).expect("worker");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.try_send(record).expect("queue");
    tokio::spawn(worker.run(rx, tokio_util::sync::CancellationToken::new()))
}

/// The first partition listed as stalled, within 5 s.
async fn first_stall(holes: &super::holes::Holes) -> super::holes::Stall {
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Some(s) = holes.stalled().into_iter().next() {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("listed as stalled")
}

/// A changelog write the broker refuses for good (an operator lowered the topic's
/// `max.message.bytes`): skipping it would lose state, so the partition retries — and
/// says so, listed as stalled (what `/readyz` shows) until the write passes.
#[tokio::test]
async fn a_changelog_write_refused_for_good_stalls_the_partition_loudly_until_it_passes() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let cx = super::tests::context(&memory, &store);
    stalls_until_the_append_passes(&memory, cx).await;
    assert_eq!(memory.sent(), vec![activated("pol1", "e1")]);
}

/// A completion decided while every changelog append is refused: the partition is
/// listed as stalled, then goes on once the appends pass (an operator fixed the topic).
async fn stalls_until_the_append_passes(memory: &Memory, cx: std::sync::Arc<super::Context<Memory>>) {
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    let holes = cx.holes.clone();
    memory.state().changelog_refusals = usize::MAX;
    let task = spawn_worker(cx, completed);
    let stalled = first_stall(&holes).await;
    assert_eq!((stalled.topic.as_str(), stalled.partition), (RAW, 0));
    assert!(
        stalled.reason.starts_with("changelog refused for good"),
        "{}",
        stalled.reason
    );
    memory.state().changelog_refusals = 0;
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("goes on once accepted")
        .expect("worker");
    assert!(holes.stalled().is_empty(), "no longer stalled once the append passed");
}

/// `cx` under exactly-once, with the committer's part played by a task: abort a failed
/// transaction, commit one that holds work.
fn exactly_once(
    mut cx: std::sync::Arc<super::Context<Memory>>,
) -> (std::sync::Arc<super::Context<Memory>>, tokio::task::JoinHandle<()>) {
    std::sync::Arc::get_mut(&mut cx).expect("unshared").gates = super::Gates::exactly_once();
    let gate = cx.gates.payments.clone().expect("a gate");
    let committer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let closed = gate.close().await;
            let pending = gate.pending(&closed);
            if pending.failed {
                gate.aborted(&closed, &Default::default());
            } else if !pending.is_empty() {
                gate.committed(&closed);
            }
        }
    });
    (cx, committer)
}

/// Under exactly-once a changelog append refused for good fails the transaction: the
/// batch is aborted and decided again — forever, if nothing changes. So the partition
/// is listed as stalled the same way until the append passes.
#[tokio::test]
async fn under_exactly_once_a_changelog_write_refused_for_good_stalls_the_partition() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let (cx, committer) = exactly_once(super::tests::context(&memory, &store));
    stalls_until_the_append_passes(&memory, cx).await;
    committer.abort();
    assert!(memory.sent().contains(&activated("pol1", "e1")), "{:?}", memory.sent());
}

/// A broker unavailable for a long time under exactly-once: every attempt is aborted
/// and decided again. Each attempt starts over; none nests in the one before (which
/// overflowed the stack after a few hundred).
#[tokio::test]
async fn under_exactly_once_a_long_outage_is_retried_without_nesting() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    let cx = super::tests::context_with(&memory, &store, |p| p.max_backoff = std::time::Duration::from_millis(1));
    let (cx, committer) = exactly_once(cx);
    memory.state().failures = std::iter::repeat_n(super::memory::Fail::Unavailable, 2_000).collect();
    let worker = Worker::new(cx, super::Stage::Payments, 0).expect("worker");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(completed).await.expect("queue");
    drop(tx);
    tokio::time::timeout(std::time::Duration::from_secs(60), worker.run(rx, Default::default()))
        .await
        .expect("goes on once the broker is back");
    committer.abort();
    assert!(memory.state().failures.is_empty(), "every failure was met");
    assert!(memory.sent().contains(&activated("pol1", "e1")), "{:?}", memory.sent());
}

/// A read the broker refuses until an operator grants it (the group's offsets): the
/// worker cannot start without it and retries, listed as stalled meanwhile, then goes
/// on once the grant is there.
#[tokio::test]
async fn a_missing_grant_for_the_groups_offset_stalls_the_partition_until_granted() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    let cx = super::tests::context(&memory, &store);
    let holes = cx.holes.clone();
    memory.state().position_denials = usize::MAX;
    let task = spawn_worker(cx, completed);
    let stalled = first_stall(&holes).await;
    assert!(stalled.reason.contains("needs an operator"), "{}", stalled.reason);
    memory.state().position_denials = 0;
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("goes on once granted")
        .expect("worker");
    assert!(holes.stalled().is_empty());
    assert_eq!(memory.sent(), vec![activated("pol1", "e1")]);
}
