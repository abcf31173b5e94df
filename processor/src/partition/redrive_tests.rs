//! Re-driving dead letters through the payment stage, in memory (`processor dlq
//! redrive` publishes a letter's original record again with a `hookstream-redrive-of`
//! header).

use super::memory::{Fail, Memory};
use super::tests::{activated, run};
use crate::store::Store;

#[tokio::test]
async fn a_redriven_letter_of_a_refused_activation_request_sends_the_request_again() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let completed = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    // The requests topic refuses for good (its max.message.bytes lowered below the
    // request): a processing_error letter.
    memory.state().failures.push_back(Fail::Refused);
    run(&memory, &store, vec![completed.clone()]).await;
    assert_eq!(memory.sent(), vec!["dead:processing_error"]);
    // The operator fixes the topic and re-drives the letter: the completion is a
    // duplicate, and still its request goes out, with the same id.
    memory.state().calls.clear();
    let redriven = memory.append_redriven(&completed, "letter-1");
    run(&memory, &store, vec![redriven.clone()]).await;
    assert_eq!(memory.sent(), vec![activated("pol1", "e1")]);
    // A provider's plain retry of the same completion stays a silent duplicate.
    memory.state().calls.clear();
    let retried = memory.append("pay1", "e1", 1, "payment.completed", "pol1");
    run(&memory, &store, vec![retried]).await;
    assert!(memory.sent().is_empty(), "{:?}", memory.sent());
}

#[tokio::test]
async fn a_redriven_record_refused_again_keeps_one_letter_per_chain() {
    let (memory, store) = (Memory::default(), Store::temporary().expect("store"));
    let first = memory.append("pay1", "e1", 1, "payment.created", "pol1");
    let second = memory.append("pay1", "e2", 2, "payment.processing", "pol1");
    // A late copy of sequence 1 under a new id: stale.
    let stale = memory.append("pay1", "e1b", 1, "payment.created", "pol1");
    run(&memory, &store, vec![first, second, stale.clone()]).await;
    let letters = |memory: &Memory| memory.dead_letters();
    let original = letters(&memory);
    assert_eq!(original.len(), 1);
    let again: Vec<_> = (0..2)
        .map(|_| memory.append_redriven(&stale, &original[0].dead_letter_id))
        .collect();
    run(&memory, &store, again).await;
    let all = letters(&memory);
    let redriven = &all[1..];
    assert_eq!(redriven.len(), 2, "each re-drive refused again: {all:?}");
    assert_eq!(
        redriven[0].dead_letter_id, redriven[1].dead_letter_id,
        "one letter for the chain"
    );
    assert_ne!(redriven[0].dead_letter_id, original[0].dead_letter_id);
}
