//! The processor's sled files damaged while it is down (truncated, garbage in the middle,
//! a garbled `conf`): the next start does not crash-loop. sled opens a damaged log up to
//! its last intact write, and the processor restores the rest from the changelog; a store
//! sled refuses to open is moved aside and restored whole. Either way every completed
//! payment ends with exactly the one activation id it had before.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use hookstream_processor::rules::decide::activation_id;
use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{test_config, ChildProcessor, Topics};
use hookstream_tests::{ingest, kafka, sign};

const PAYMENTS: usize = 20;

/// Every regular file under `dir`, largest first.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path, e.metadata().unwrap().len()));
        }
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.1));
    out
}

async fn send(addr: &str, i: usize, seq: i64) {
    let ty = ["payment.created", "payment.processing", "payment.completed"][seq as usize - 1];
    let (id, pay, pol) = (format!("evt_s{i}_{seq}"), format!("pay_s{i}"), format!("pol_s{i}"));
    sign::send_event(addr, &id, &pay, Some(seq), ty, Some(&pol)).await;
}

/// Damage the stopped processor's store with `damage`; `expect_moved_aside`: whether
/// sled then refuses to open it.
async fn run(damage: impl FnOnce(&Path), expect_moved_aside: bool) {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 2).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = test_config(broker.bootstrap(), &topics, &state);
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let first = ChildProcessor::spawn(&config, dir.path());
    first.wait_assigned(Duration::from_secs(60)).await;
    // Every payment created and processing; the first half completed (and activated).
    for i in 0..PAYMENTS {
        send(&ingest.addr(), i, 1).await;
        send(&ingest.addr(), i, 2).await;
    }
    for i in 0..PAYMENTS / 2 {
        send(&ingest.addr(), i, 3).await;
    }
    kafka::activations_by_policy(broker.bootstrap(), &topics.activations, PAYMENTS / 2).await;
    // Let the processor persist what it decided (a batch, then sled's flush).
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill();
    damage(&state);

    let second = ChildProcessor::spawn(&config, dir.path());
    // The second half completes; the first half's completions are sent again (a provider's retry).
    for i in 0..PAYMENTS {
        send(&ingest.addr(), i, 3).await;
    }
    let (_, by) = kafka::activations_by_policy(broker.bootstrap(), &topics.activations, PAYMENTS).await;
    let want: BTreeMap<String, BTreeSet<String>> = (0..PAYMENTS)
        .map(|i| {
            let pol = format!("pol_s{i}");
            let id = activation_id(&pol, "paymenthub", &format!("evt_s{i}_3"));
            (pol, BTreeSet::from([id]))
        })
        .collect();
    assert_eq!(
        by, want,
        "one activation id per completed payment, the same as before the damage"
    );
    let metrics =
        String::from_utf8_lossy(&hookstream_tests::http::get(&second.admin, "/metrics").await.body).into_owned();
    let restored = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookstream_processor_restored_records_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let moved_aside = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("state.broken-"));
    eprintln!("restored {restored} changelog records; store moved aside: {moved_aside}");
    assert!(
        restored > 0,
        "what the damaged store lost was restored from the changelog:\n{metrics}"
    );
    assert_eq!(moved_aside, expect_moved_aside, "whether the store was moved aside");
    let mut second = second;
    assert!(
        second.wait_exit(Duration::ZERO).is_none(),
        "the processor runs on with a damaged store"
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_sled_file_is_survived_with_the_same_outputs() {
    run(
        |state| {
            let (path, len) = files(state).remove(0);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len / 3)
                .unwrap();
            eprintln!("truncated {} from {len} to {} bytes", path.display(), len / 3);
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_middle_of_a_sled_file_is_survived_with_the_same_outputs() {
    run(
        |state| {
            use std::io::{Seek, SeekFrom, Write};
            for (path, len) in files(state) {
                if len < 64 {
                    continue;
                }
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.seek(SeekFrom::Start(len / 2)).unwrap();
                let garbage: Vec<u8> = (0..(len / 4).min(4096)).map(|i| (i * 131 % 251) as u8).collect();
                f.write_all(&garbage).unwrap();
                eprintln!(
                    "{} bytes of garbage in the middle of {} ({len} bytes)",
                    garbage.len(),
                    path.display()
                );
            }
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_sled_refuses_to_open_is_moved_aside_and_restored() {
    run(
        |state| {
            // sled's `conf` file is checksummed: garbage there and sled refuses the directory.
            let conf = state.join("conf");
            let len = std::fs::metadata(&conf).unwrap().len() as usize;
            std::fs::write(&conf, vec![0xA5; len]).unwrap();
        },
        true,
    )
    .await;
}
