//! The coordinator with fake workers: delivery, ownership, hand-over and its deadline.

use std::sync::{Arc, Mutex};

use super::*;
use crate::rules::model::{Origin, RawRecord};

const P: Stage = Stage::Payments;

/// What the fake workers did: records received per partition, and which exited
/// (and whether they were told to stop).
#[derive(Debug, Default)]
struct Journal {
    received: Vec<(i32, i64)>,
    exited: Vec<(Key, bool)>,
}

/// Workers that take `linger` to hand over after their queue closes.
struct Fake {
    journal: Arc<Mutex<Journal>>,
    linger: Duration,
}

impl Spawner for Fake {
    type Worker = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    fn worker(&mut self, key: Key, mut rx: mpsc::Receiver<Incoming>, stop: CancellationToken) -> Option<Self::Worker> {
        let (journal, linger) = (self.journal.clone(), self.linger);
        let p = key.1;
        Some(Box::pin(async move {
            while let Some(m) = rx.recv().await {
                journal.lock().unwrap().received.push((p, m.record.origin.offset));
            }
            let stopped = tokio::select! {
                () = tokio::time::sleep(linger) => false,
                () = stop.cancelled() => true,
            };
            journal.lock().unwrap().exited.push((key, stopped));
        }))
    }

    fn feed(&mut self, _key: Key, _tx: Feeder) -> Option<JoinHandle<()>> {
        None
    }
}

fn record(partition: i32, offset: i64) -> (Key, Incoming) {
    let origin = Origin {
        topic: "raw".into(),
        partition,
        offset,
        timestamp_ms: 0,
    };
    let r = Incoming {
        record: Arc::new(RawRecord {
            origin,
            key: None,
            value: None,
            headers: vec![],
        }),
        traceparent: None,
        held: Default::default(),
    };
    ((P, partition), r)
}

struct Running {
    journal: Arc<Mutex<Journal>>,
    membership: mpsc::UnboundedSender<Membership>,
    records: mpsc::Sender<(Key, Incoming)>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn start(linger: Duration, deadline: Duration) -> Running {
    let journal = Arc::new(Mutex::new(Journal::default()));
    let fake = Fake {
        journal: journal.clone(),
        linger,
    };
    let (membership, m_rx) = mpsc::unbounded_channel();
    let (records, r_rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Coordinator::new(fake, 8, 1 << 20, deadline).run(m_rx, r_rx, shutdown.clone()));
    Running {
        journal,
        membership,
        records,
        shutdown,
        task,
    }
}

/// Wait until the workers have received `n` records.
async fn received(r: &Running, n: usize) {
    for _ in 0..500 {
        if r.journal.lock().unwrap().received.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("records not delivered: {:?}", r.journal.lock().unwrap());
}

/// Revoke `partitions` and wait for the answer, as the rebalance callback does.
async fn revoke(r: &Running, partitions: Vec<i32>) {
    let (done, answered) = std::sync::mpsc::sync_channel(1);
    let keys = partitions.into_iter().map(|p| (P, p)).collect();
    r.membership.send(Membership::Revoked(keys, done)).unwrap();
    tokio::task::spawn_blocking(move || answered.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the revocation is answered");
}

#[tokio::test]
async fn records_reach_their_partitions_worker_and_only_owned_partitions_run() {
    let r = start(Duration::ZERO, Duration::from_secs(5));
    r.membership
        .send(Membership::Assigned(vec![(P, 0), (P, 1)], None))
        .unwrap();
    for m in [record(0, 5), record(1, 7), record(2, 9), record(0, 6)] {
        r.records.send(m).await.unwrap();
    }
    received(&r, 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.shutdown.cancel();
    r.task.await.unwrap();
    let j = r.journal.lock().unwrap();
    let mut received = j.received.clone();
    received.sort_unstable();
    assert_eq!(received, vec![(0, 5), (0, 6), (1, 7)], "partition 2 is not ours");
    let mut exited = j.exited.clone();
    exited.sort_unstable();
    assert_eq!(
        exited,
        vec![((P, 0), false), ((P, 1), false)],
        "shutdown hands every partition over"
    );
}

#[tokio::test]
async fn a_revocation_is_answered_only_after_its_workers_handed_over() {
    let r = start(Duration::from_millis(300), Duration::from_secs(5));
    r.membership
        .send(Membership::Assigned(vec![(P, 0), (P, 1)], None))
        .unwrap();
    r.records.send(record(0, 1)).await.unwrap();
    received(&r, 1).await;
    revoke(&r, vec![0]).await;
    assert_eq!(
        r.journal.lock().unwrap().exited,
        vec![((P, 0), false)],
        "finished, not stopped"
    );
    // A record of the revoked partition still queued is left to its next owner.
    r.records.send(record(0, 2)).await.unwrap();
    r.records.send(record(1, 3)).await.unwrap();
    received(&r, 2).await;
    r.shutdown.cancel();
    r.task.await.unwrap();
    let j = r.journal.lock().unwrap();
    assert_eq!(j.received, vec![(0, 1), (1, 3)]);
}

#[tokio::test]
async fn a_worker_past_the_deadline_is_stopped_and_the_revocation_still_answered() {
    let r = start(Duration::from_secs(60), Duration::from_millis(100));
    r.membership.send(Membership::Assigned(vec![(P, 3)], None)).unwrap();
    r.records.send(record(3, 0)).await.unwrap();
    received(&r, 1).await;
    let started = std::time::Instant::now();
    revoke(&r, vec![3]).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.journal.lock().unwrap().exited, vec![((P, 3), true)]);
    r.shutdown.cancel();
    r.task.await.unwrap();
}
