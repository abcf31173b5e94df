//! The writer epoch at least once, in memory ([`super::epoch`]): a previous owner's
//! entries after the new owner's claim, an unfinished batch before a claim, and a worker
//! that finds another owner's claim.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::io::Changelog;
use super::memory::{Call, Memory, RAW, RAW_CHANGELOG};
use super::tests::{activated, applied, context, run};
use super::worker::Worker;
use super::Stage;
use crate::rules::model::{EventType, PaymentState};
use crate::store::changelog::{claim_entry, claimed_epoch, epoch_of, META};
use crate::store::{Entry, Store};

/// A changelog entry of `payment` as its state would be written.
fn payment_entry(st: &PaymentState) -> Entry {
    Entry {
        key: [b"p".as_slice(), st.key().as_bytes()].concat(),
        value: Some(serde_json::to_vec(st).expect("json")),
    }
}

fn meta(applied: i64) -> Entry {
    Entry {
        key: META.to_vec(),
        value: Some(format!("{{\"applied\":{applied},\"max_ts\":1000}}").into_bytes()),
    }
}

/// Append `entries` to the changelog as a writer of `epoch`.
async fn log_as(memory: &Memory, epoch: Option<u64>, entries: &[Entry]) {
    Changelog::append(memory, RAW_CHANGELOG, 0, epoch, entries)
        .await
        .expect("append");
}

fn status(store: &Store, payment: &str) -> Option<EventType> {
    store
        .partition(RAW, 0)
        .and_then(|p| p.payment(&PaymentState::new("src", payment).key()))
        .expect("store")
        .and_then(|p| p.status)
}

#[tokio::test]
async fn entries_of_a_previous_owner_after_a_newer_claim_are_ignored_and_written_over() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    run(&memory, &store, vec![completed]).await;
    // A new owner restores and claims; then the first owner, paused past its session,
    // wakes up and writes what it decided from its queue: an older state of pay1.
    run(&memory, &Store::temporary().expect("store"), vec![]).await;
    let stale = PaymentState::new("src", "pay1");
    log_as(&memory, Some(1), &[payment_entry(&stale), meta(0)]).await;

    let fresh = Store::temporary().expect("store");
    let refund = memory.append("pay1", "e2", 2, "payment.refunded", "pol1");
    memory.state().calls.clear();
    run(&memory, &fresh, vec![refund]).await;
    let sent = memory.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].starts_with("request:Cancel:"), "the refund cancels: {sent:?}");
    // The ignored key was written again by the restoring owner, after its claim: the
    // version compaction keeps is a valid one.
    let log = memory.records(RAW_CHANGELOG);
    let last_claim = log
        .iter()
        .rposition(|m| m.record.key.as_deref().and_then(claimed_epoch).is_some())
        .expect("a claim");
    let rewritten = log[last_claim..]
        .iter()
        .any(|m| m.record.key.as_deref() == Some(payment_entry(&stale).key.as_slice()));
    assert!(rewritten, "pay1 written again after the claim");
}

#[tokio::test]
async fn a_claim_voids_the_unfinished_batch_of_the_owner_before() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    run(&memory, &store, vec![completed]).await;
    // The owner crashed half-way through its next batch: an entry, no meta entry.
    let mut refunded = PaymentState::new("src", "pay1");
    refunded.status = Some(EventType::Refunded);
    log_as(&memory, Some(1), &[payment_entry(&refunded)]).await;
    // The next owner decides a smaller batch, closed by its meta entry.
    let other = memory.append("pay2", "e2", 1, "payment.created", "pol2");
    run(&memory, &Store::temporary().expect("store"), vec![other]).await;

    let fresh = Store::temporary().expect("store");
    run(&memory, &fresh, vec![]).await;
    assert_eq!(status(&fresh, "pay1"), Some(EventType::Completed), "the orphan is void");
    assert_eq!(applied(&fresh), Some(1));
}

#[tokio::test]
async fn a_worker_that_meets_another_owners_claim_writes_nothing_more() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let cx = context(&memory, &store);
    let metrics = cx.metrics.clone();
    let worker = Worker::new(cx, Stage::Payments, 0).expect("worker");
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(worker.run(rx, CancellationToken::new()));
    tx.send(memory.append("pay1", "e1", 1, "payment.completed", "pol1"))
        .await
        .expect("queue");
    tokio::time::timeout(Duration::from_secs(5), async {
        while memory.sent().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first record is decided");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile the group gave the partition to another instance, which claimed it.
    log_as(&memory, Some(7), &[claim_entry(7)]).await;
    let commits_before = commits(&memory);
    tx.send(memory.append("pay2", "e2", 1, "payment.completed", "pol2"))
        .await
        .expect("queue");
    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.fenced.get() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("its next append finds the claim");
    tx.send(memory.append("pay3", "e3", 1, "payment.completed", "pol3"))
        .await
        .expect("queue");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the worker stops")
        .expect("worker");

    assert_eq!(metrics.fenced.get(), 1);
    let log = memory.records(RAW_CHANGELOG);
    let claim = log
        .iter()
        .position(|m| m.record.key.as_deref().and_then(claimed_epoch) == Some(7))
        .expect("the claim");
    let after: Vec<_> = log[claim + 1..].iter().collect();
    assert!(
        after.iter().all(|m| m.record.key.as_deref() != Some(META)),
        "no batch closed after the claim"
    );
    assert!(
        after.iter().all(|m| epoch_of(&m.record.headers) == Some(1)),
        "what it wrote before it knew carries its old epoch, which a restore ignores"
    );
    assert_eq!(commits(&memory), commits_before, "no offset committed after the claim");
    assert!(
        !memory.sent().contains(&activated("pol3", "e3")),
        "nothing decided after it knew"
    );
    assert_eq!(applied(&store), None, "its local state is dropped");
}

fn commits(memory: &Memory) -> usize {
    memory
        .state()
        .calls
        .iter()
        .filter(|c| matches!(c, Call::Commit { .. }))
        .count()
}

/// The lifecycle as the metric shows it: a worker restores, runs, and once its queue
/// closes is gone from every phase.
#[tokio::test]
async fn a_worker_is_counted_in_its_lifecycle_phase_until_it_closes() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let cx = super::tests::context(&memory, &store);
    let metrics = cx.metrics.clone();
    let count = move |phase: &str| metrics.partition_workers.with_label_values(&["payments", phase]).get();
    let worker = Worker::new(cx, super::Stage::Payments, 0).expect("worker");
    assert_eq!(count("created"), 1);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(worker.run(rx, tokio_util::sync::CancellationToken::new()));
    tx.send(memory.append("pay1", "e1", 1, "payment.completed", "pol1"))
        .await
        .expect("queue");
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while memory.sent().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("decided");
    assert_eq!((count("created"), count("restoring"), count("running")), (0, 0, 1));
    drop(tx);
    task.await.expect("worker");
    let phases = super::lifecycle::Phase::ALL.map(|p| count(p.as_str()));
    assert_eq!(phases, [0; 6], "closed: counted nowhere");
}
