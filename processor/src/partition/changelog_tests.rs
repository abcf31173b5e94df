//! The partition loop with its changelog, in memory: state that outlives the input
//! log and the local store, and a batch whose writer stopped half-way.

use super::memory::{Memory, RAW, RAW_CHANGELOG};
use super::tests::{activated, applied, run};
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
    crate::partition::io::Changelog::append(&memory, RAW_CHANGELOG, 0, &[tail])
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
