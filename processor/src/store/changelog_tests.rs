//! The changelog's entries restore the state they record.

use super::*;
use crate::rules::model::{DedupEntry, PaymentState};
use crate::store::Store;

fn dedup(first_seen_ms: i64) -> DedupEntry {
    DedupEntry {
        first_seen_ms,
        body_hash: "h".into(),
        offset: 1,
    }
}

#[test]
fn a_store_restored_from_its_entries_holds_the_same_state() {
    let store = Store::temporary().unwrap();
    let (a, b) = (store.partition("raw", 0).unwrap(), store.partition("raw", 1).unwrap());
    let mut c = Changes::default();
    let pay = PaymentState::new("src", "pay");
    c.payments.insert(pay.key(), pay.clone());
    c.dedup.insert("src\0e1".into(), dedup(1_000));
    c.dedup.insert("src\0e2".into(), dedup(9_000));
    c.applied = Some(7);
    c.max_ts = Some(9_000);
    a.persist(&c, &c.entries(), Some(5)).unwrap();
    let mut second = Changes {
        expired: a.expired_dedup(2_000, 10).unwrap(),
        applied: Some(8),
        max_ts: Some(9_000),
        ..Changes::default()
    };
    assert_eq!(second.expired.len(), 1);
    second.payments.insert(pay.key(), pay.clone());
    a.persist(&second, &second.entries(), Some(9)).unwrap();

    let mut log = c.entries();
    log.extend(c.meta_entry());
    log.extend(second.entries());
    log.extend(second.meta_entry());
    b.restore(&log, 9).unwrap();
    let strip = |d: Vec<(Vec<u8>, Vec<u8>)>| d.into_iter().filter(|(k, _)| k[0] != b'x').collect::<Vec<_>>();
    assert_eq!(strip(a.dump()), strip(b.dump()));
    assert_eq!(b.applied_offset().unwrap(), Some(8));
    assert!(b.dedup("src\0e1").unwrap().is_none());
    assert_eq!(b.changelog_next().unwrap(), Some(9));
}

#[test]
fn a_dedup_key_seen_again_after_its_window_keeps_its_new_entry() {
    let store = Store::temporary().unwrap();
    let (a, b) = (store.partition("raw", 0).unwrap(), store.partition("raw", 1).unwrap());
    let k = "src\0e1";
    let mut first = Changes::default();
    first.dedup.insert(k.into(), dedup(1_000));
    first.applied = Some(0);
    a.persist(&first, &first.entries(), Some(2)).unwrap();
    // Seen again at 50 s, past a 10 s window: the batch writes a new entry while the
    // old one is due to expire.
    let mut again = Changes::default();
    again.dedup.insert(k.into(), dedup(50_000));
    again.applied = Some(1);
    again.set_expired(a.expired_dedup(40_000, 10).unwrap());
    a.persist(&again, &again.entries(), Some(4)).unwrap();
    assert_eq!(
        a.dedup(k).unwrap().map(|d| d.first_seen_ms),
        Some(50_000),
        "the new entry stays"
    );
    let mut log = first.entries();
    log.extend(first.meta_entry());
    log.extend(again.entries());
    log.extend(again.meta_entry());
    b.restore(&log[..2], 2).unwrap();
    b.restore(&log[2..], 4).unwrap();
    assert_eq!(
        b.dedup(k).unwrap().map(|d| d.first_seen_ms),
        Some(50_000),
        "restored too"
    );
    // The old index entry left by the restore does not expire the new entry early.
    assert!(b.expired_dedup(40_000, 10).unwrap().is_empty());
    assert_eq!(b.dedup(k).unwrap().map(|d| d.first_seen_ms), Some(50_000));
}

#[test]
fn a_reset_entry_voids_what_came_before_it() {
    let store = Store::temporary().unwrap();
    let p = store.partition("raw", 0).unwrap();
    let mut c = Changes::default();
    let pay = PaymentState::new("src", "pay");
    c.payments.insert(pay.key(), pay);
    c.applied = Some(3);
    let mut log = c.entries();
    log.extend(c.meta_entry());
    log.push(reset_entry());
    p.restore(&log, 3).unwrap();
    assert_eq!(p.applied_offset().unwrap(), None);
    assert!(p.payment("pay\0src").unwrap().is_none());
}
