//! Chaos: the processor binary is killed with SIGKILL mid-stream and started again
//! (with its state, with its state directory wiped, and 10 times within 2 minutes under
//! steady load with static membership as in production, reporting the time from each
//! restart to its first decision, under both guarantees). Every completed payment
//! still has exactly one activation id and nothing is lost; at least once an activation
//! sent twice has the same id, exactly once a `read_committed` reader sees it once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hookstream_processor::config::Guarantee;
use hookstream_processor::rules::decide::activation_id;
use hookstream_tests::broker::Broker;
use hookstream_tests::processor::{test_config, ChildProcessor, Topics};
use hookstream_tests::{ingest, kafka, sign};

const PAYMENTS: usize = 150;

/// The processors' log lines that tell what happened (for failure messages).
fn logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("processor-") && name.ends_with(".log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.push_str(&format!("--- {name}\n"));
            for l in text.lines().filter(|l| !l.contains("record decided")) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

async fn run_kill_and_restart(wipe_state: bool) {
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = test_config(broker.bootstrap(), &topics, &state);
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let first = ChildProcessor::spawn(&config, dir.path());
    first.wait_assigned(Duration::from_secs(60)).await;
    let sender = sign::paced_lifecycles(ingest.addr(), "c", PAYMENTS, 5, Duration::from_millis(150));

    // Kill once a part of the activations is out, while traffic is still flowing.
    // ...and once the group has committed an offset, so a restart without state has
    // something to rebuild from the log (commits go out every 500 ms; on a broker whose
    // first rebalance is slow, the first activations can all come before the first one).
    let (n, _) = kafka::activations_by_policy(broker.bootstrap(), &topics.activations, 20).await;
    assert!(n >= 20, "the processor made progress before the kill (saw {n})");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let committed = || kafka::committed_and_ends(broker.bootstrap(), &config.kafka.group_id, &topics.raw, 4);
    while committed().iter().all(|(c, _)| c.unwrap_or(0) == 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no offset committed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill();
    if wipe_state {
        std::fs::remove_dir_all(&state).unwrap();
    }
    let second = ChildProcessor::spawn(&config, dir.path());
    sender.await.unwrap();

    let (n, by) = kafka::activations_by_policy(broker.bootstrap(), &topics.activations, PAYMENTS).await;
    let want: BTreeMap<String, BTreeSet<String>> = (0..PAYMENTS)
        .map(|i| {
            let pol = format!("pol_c{i}");
            (
                pol.clone(),
                BTreeSet::from([activation_id(&pol, "paymenthub", &format!("evt_c{i}_3"))]),
            )
        })
        .collect();
    let missing: Vec<_> = want.keys().filter(|k| !by.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "lost activations: {missing:?}\nprocessor logs:\n{}",
        logs(dir.path())
    );
    assert_eq!(by, want, "one distinct, deterministic activation id per policy");
    assert!(n >= PAYMENTS, "{n}");
    let metrics =
        String::from_utf8_lossy(&hookstream_tests::http::get(&second.admin, "/metrics").await.body).into_owned();
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let restored = metric("hookstream_processor_restored_records_total");
    assert!(
        metric("hookstream_processor_activations_total") > 0,
        "the kill must land mid-stream: the restarted processor activates the rest"
    );
    if wipe_state {
        assert!(
            restored > 0,
            "with its state gone the restarted processor must restore it from the changelog:\n{metrics}"
        );
    }
    drop(second);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_keeps_exactly_one_activation_per_policy() {
    run_kill_and_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_lost_state_dir_restores_from_the_changelog_without_new_ids() {
    run_kill_and_restart(true).await;
}

/// Decisions the processor at `admin` has made (its records_total, every stage and outcome).
async fn decisions(admin: &str) -> u64 {
    let Ok(r) = hookstream_tests::http::try_request(admin, http::Method::GET, "/metrics", &[], Vec::new()).await else {
        return 0;
    };
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with("hookstream_processor_records_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_under_steady_load_deliver_each_activation_exactly_once() {
    repeated_sigkills(Guarantee::ExactlyOnceV2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_at_least_once_keep_one_activation_id_per_payment() {
    repeated_sigkills(Guarantee::AtLeastOnce).await;
}

/// Wait (60 s at most) until a freshly started instance decided a record.
async fn wait_for_a_decision(admin: &str) {
    let started = tokio::time::Instant::now();
    while decisions(admin).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no decision within 60 s of a restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 10 SIGKILLs within 2 minutes under steady load. Either guarantee: every completed
/// payment has exactly one, deterministic activation id. Exactly once: a
/// `read_committed` reader sees each of those ids once, not only the same id again.
async fn repeated_sigkills(guarantee: Guarantee) {
    // About 65 s of load: room for 10 kills even when restarts take a few seconds.
    const PAYMENTS: usize = 600;
    const KILLS: usize = 10;
    let broker = Broker::shared();
    let topics = Topics::create(broker.bootstrap(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(broker.bootstrap(), &topics, &dir.path().join("state"));
    config.kafka.processing_guarantee = guarantee;
    // Static membership, as the production StatefulSet runs it: a restarted instance is
    // given its partitions back at once instead of after the dead member's session timeout.
    config.kafka.group_instance_id = "chaos-0".into();
    let ingest = ingest::start(broker.bootstrap(), &topics.raw, |_| {}).await;
    let mut child = ChildProcessor::spawn(&config, dir.path());
    child.wait_assigned(Duration::from_secs(60)).await;
    let sender = sign::paced_lifecycles(ingest.addr(), "k", PAYMENTS, 4, Duration::from_millis(400));
    let mut to_first_decision = Vec::new();
    let kills_started = tokio::time::Instant::now();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Kill only while webhooks keep coming: a restart then has records to decide.
        if sender.is_finished() {
            break;
        }
        child.kill();
        let started = tokio::time::Instant::now();
        child = ChildProcessor::spawn(&config, dir.path());
        wait_for_a_decision(&child.admin).await;
        to_first_decision.push(started.elapsed());
    }
    let kill_phase = kills_started.elapsed();
    sender.await.unwrap();
    eprintln!("restart to first decision: {to_first_decision:?}");
    assert_eq!(
        to_first_decision.len(),
        KILLS,
        "the load outlasted only {} kills",
        to_first_decision.len()
    );
    assert!(
        kill_phase < Duration::from_secs(120),
        "{KILLS} kills took {kill_phase:?}, not 2 minutes"
    );
    let (_, by) = kafka::activations_by_policy(broker.bootstrap(), &topics.activations, PAYMENTS).await;
    let want: BTreeMap<String, BTreeSet<String>> = (0..PAYMENTS)
        .map(|i| {
            let pol = format!("pol_k{i}");
            (
                pol.clone(),
                BTreeSet::from([activation_id(&pol, "paymenthub", &format!("evt_k{i}_3"))]),
            )
        })
        .collect();
    assert_eq!(
        by,
        want,
        "one deterministic activation id per completed payment, after {KILLS} kills:\n{}",
        logs(dir.path())
    );
    if guarantee == Guarantee::ExactlyOnceV2 {
        // Anything sent twice would have been sent by now (several commit intervals).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let counts = kafka::activation_counts(broker.bootstrap(), &topics.activations).await;
        let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            repeated.is_empty() && counts.len() == PAYMENTS,
            "a read_committed reader sees each activation once: {} ids, repeated {repeated:?}",
            counts.len()
        );
    }
    drop(child);
    ingest.stop().await;
}
