//! A replay from the beginning decides the whole log again and reproduces the first
//! run's outputs: the same activations, cancellations, duplicate notices and dead
//! letters, with the same ids, in the same order per policy; downstream, the example
//! consumer recognises every one of them as already seen.

use std::collections::{BTreeMap, BTreeSet};

use hookstream_processor::cli::replay::{self, ReplayFrom};
use hookstream_tests::kafka;
use hookstream_tests::pipeline::{Event, Pipeline, WAIT};
use hookstream_tests::processor::downstream_example;
use rdkafka::message::OwnedMessage;

use super::{activations_by_policy, after, duplicate_ids, ends, letters};

/// What one run published, and where each topic ended after it.
struct Outputs {
    activations: BTreeMap<String, Vec<(String, String)>>,
    duplicates: BTreeSet<String>,
    letters: Vec<(String, String, Option<String>)>,
    records: usize,
    dlq_records: usize,
    activation_ends: Vec<i64>,
    dlq_ends: Vec<i64>,
}

/// 10 payments that complete, each event sent once or twice, every third out of order
/// (completed before processing), `pay_r1` refunded later; then the troublemakers, the
/// second payment for `pol_r0` (`Pipeline::send_the_troublemakers`).
async fn send_the_day(p: &Pipeline) {
    for i in 0..10 {
        let (pay, pol) = (format!("pay_r{i}"), format!("pol_r{i}"));
        let mut order = vec![
            (1, Event::created(&pay)),
            (2, Event::processing(&pay)),
            (3, Event::completed(&pay)),
        ];
        if i % 3 == 0 {
            order.swap(1, 2);
        }
        for (seq, e) in order {
            let e = e.id(&format!("evt_{pay}_{seq}")).seq(seq).policy(&pol);
            for _ in 0..1 + (i + seq as usize) % 2 {
                p.send(e.clone()).await;
            }
        }
    }
    p.send(Event::refunded("pay_r1").id("evt_pay_r1_4").seq(4).policy("pol_r1"))
        .await;
    p.send_the_troublemakers("pol_r0").await;
    // Every activation (the gapped payment's after its gap timed out), the cancellation
    // and the duplicate notice; then the late event.
    p.policy_events(13).await;
    p.send_the_late_gap().await;
    p.dead_letters(4).await;
}

/// The first run's outputs, once the processor stopped.
async fn first_run(p: &Pipeline) -> Outputs {
    let kcfg = &p.config.kafka;
    // Record counts, not end offsets: transactions' commit markers take offsets too.
    let records = kafka::read_committed_to_end(p.bootstrap(), &p.topics.activations).await;
    let dlq = kafka::read_committed_to_end(p.bootstrap(), &p.topics.dlq).await;
    let run = Outputs {
        activations: activations_by_policy(&records),
        duplicates: duplicate_ids(&records),
        letters: letters(&dlq),
        records: records.len(),
        dlq_records: dlq.len(),
        activation_ends: ends(kcfg, &p.topics.activations, 3),
        dlq_ends: ends(kcfg, &p.topics.dlq, 1),
    };
    let by_policy = &run.activations;
    assert_eq!(by_policy.len(), 11, "10 policies + the gapped one: {by_policy:#?}");
    assert_eq!(
        run.records, 13,
        "11 activations, the cancellation and the notice: {by_policy:#?}"
    );
    assert_eq!(by_policy["pol_r1"].len(), 2, "activated, then cancelled by the refund");
    assert_eq!(run.duplicates.len(), 1);
    assert_eq!(run.letters.len(), 4, "{:#?}", run.letters);
    run
}

/// Move the stopped group back to the beginning of every partition; the raw topic's
/// total end offset.
async fn replay_from_the_beginning(p: &Pipeline) -> i64 {
    let r = replay::run(&p.config.kafka, &ReplayFrom::Beginning, false)
        .await
        .unwrap();
    assert_eq!(r.len(), 4);
    for part in &r {
        assert_eq!(part.reset_to, part.log_start);
        assert_eq!(
            part.committed_before,
            Some(part.log_end),
            "the stopped group had processed everything"
        );
    }
    r.iter().map(|part| part.log_end).sum()
}

/// The replay published every output again, nothing more, with the first run's ids in
/// the first run's order per policy.
async fn assert_the_replay_published_the_same(p: &Pipeline, run: &Outputs) {
    let (act_now, dlq_now) = (
        kafka::read_committed_to_end(p.bootstrap(), &p.topics.activations).await,
        kafka::read_committed_to_end(p.bootstrap(), &p.topics.dlq).await,
    );
    assert_eq!(
        act_now.len(),
        2 * run.records,
        "every output published again, nothing more"
    );
    assert_eq!(dlq_now.len(), 2 * run.dlq_records);
    let all = kafka::read_records(p.bootstrap(), &p.topics.activations, 2 * run.records, WAIT).await;
    let all_dlq = kafka::read_records(p.bootstrap(), &p.topics.dlq, 2 * run.dlq_records, WAIT).await;
    let again: Vec<OwnedMessage> = after(&all, &run.activation_ends);
    assert_eq!(
        activations_by_policy(&again),
        run.activations,
        "replayed activations differ"
    );
    assert_eq!(duplicate_ids(&again), run.duplicates, "the same duplicate notice again");
    assert_eq!(
        letters(&after(&all_dlq, &run.dlq_ends)),
        run.letters,
        "replayed dead letters differ"
    );
}

/// The example consumer de-duplicates by id, whether it re-reads everything or from a
/// time (then only the replay's re-published events, all of them already seen).
fn assert_downstream_sees_nothing_new(p: &Pipeline, run: &Outputs, replayed_at: &str) {
    let id = |l: &serde_json::Value| {
        let id = l["cancellation_id"].as_str().or(l["duplicate_id"].as_str());
        id.or(l["activation_id"].as_str()).unwrap_or_default().to_owned()
    };
    let ids = |lines: &[serde_json::Value]| {
        let mut v: Vec<String> = lines.iter().map(id).collect();
        v.sort();
        v
    };
    let mut first_ids: Vec<String> = run.activations.values().flatten().map(|(id, _)| id.clone()).collect();
    first_ids.extend(run.duplicates.iter().cloned());
    first_ids.sort();
    let (brokers, topic) = (p.bootstrap(), &p.topics.activations);
    let (lines, dups) = downstream_example(brokers, topic, &["--from", "beginning"], 13);
    assert_eq!((lines.len(), dups), (13, 13), "{lines:#?}");
    assert_eq!(ids(&lines), first_ids);
    let (lines, dups) = downstream_example(brokers, topic, &["--from-time", replayed_at], 13);
    assert_eq!((ids(&lines), dups), (first_ids, 0));
    for l in &lines {
        let part = l["partition"]
            .as_i64()
            .and_then(|x| usize::try_from(x).ok())
            .unwrap_or_default();
        let offset = l["offset"].as_i64().unwrap_or_default();
        assert!(offset >= run.activation_ends[part], "{l} was written before the replay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_the_beginning_reproduces_the_same_activations_and_dead_letters() {
    let mut p = Pipeline::start(4).await;
    send_the_day(&p).await;
    // Let the last outputs and commits go out, then stop the group.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    p.stop_processor().await;
    let run = first_run(&p).await;
    let raw_end = replay_from_the_beginning(&p).await;

    // The same processor (same state directory) comes back: it notices the group moved
    // back, rebuilds, and decides the whole log again.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let replayed_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    p.start_processor().await;
    p.policy_events(2 * run.records).await;
    p.dead_letters(2 * run.dlq_records).await;
    // Anything extra would show up now.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let metrics = p.metrics().await;
    p.stop_processor().await;
    assert_the_replay_published_the_same(&p, &run).await;
    assert_downstream_sees_nothing_new(&p, &run, &replayed_at);
    assert!(
        metrics.contains("hookstream_processor_replays_detected_total 4"),
        "every partition noticed the replay: {metrics}"
    );
    assert!(
        metrics.contains("hookstream_processor_gap_timeouts_total 0"),
        "the replay takes the gap timeout from the log, it writes no new one: {metrics}"
    );
    let raw_now: i64 = ends(&p.config.kafka, &p.topics.raw, 4).iter().sum();
    assert_eq!(
        raw_now, raw_end,
        "the replay added nothing to the raw topic (no new gap timeout)"
    );
    p.stop().await;
}
