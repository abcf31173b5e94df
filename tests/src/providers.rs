//! Providers as a failure test needs them: payment lifecycles sent through ingest, each
//! event retried after `Retry-After` until it is answered 200, and a record of every
//! answer, so a test can say what was acknowledged and what else was seen.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ingest::{scheme_of, secrets_of};
use crate::{http, sign};

/// What the retrying senders saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Event ids answered 200.
    pub acked: BTreeSet<String>,
    /// Payments whose three events were all answered 200.
    pub completed: BTreeSet<usize>,
    /// 503 and 429 answers that carried `Retry-After`.
    pub unavailable: usize,
    /// Any other answer: status and body, or the transport error.
    pub other: Vec<String>,
}

/// Note one answer to `id`; whether it was a 200.
pub fn record(seen: &mut Seen, id: &str, answer: Result<http::Reply, http::NoAnswer>) -> bool {
    match answer {
        Ok(r) if r.status == 200 => {
            seen.acked.insert(id.to_owned());
            return true;
        }
        Ok(r) if (r.status == 503 || r.status == 429) && r.headers.contains_key("retry-after") => seen.unavailable += 1,
        Ok(r) => seen
            .other
            .push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
        Err(e) => seen.other.push(hookstream_schemas::error_chain(&e)),
    }
    false
}

/// `workers` providers sending payment lifecycles (created, processing, completed, with
/// policy `pol_b<i>`) until `stop`, each event retried as a provider does (after
/// `Retry-After`) until it is answered 200. A worker finishes the lifecycle it started.
pub fn retrying_lifecycles(
    addr: String,
    workers: usize,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let secret = secrets_of("paymenthub")[0];
    (0..workers)
        .map(|w| {
            let (addr, seen, stop) = (addr.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = w;
                while !stop.is_cancelled() {
                    for (seq, ty) in [
                        (1, "payment.created"),
                        (2, "payment.processing"),
                        (3, "payment.completed"),
                    ] {
                        let (id, pol) = (format!("evt_b{i}_{seq}"), format!("pol_b{i}"));
                        let body = sign::payment_body(&id, &format!("pay_b{i}"), Some(seq), ty, Some(&pol));
                        let started = tokio::time::Instant::now();
                        loop {
                            assert!(started.elapsed() < Duration::from_secs(90), "{id} never answered 200");
                            let h = sign::sign(scheme_of("paymenthub"), secret, &id, sign::now(), &body);
                            let r = http::try_post(&addr, "/webhooks/paymenthub", &h, body.clone()).await;
                            if record(&mut seen.lock().unwrap_or_else(|p| p.into_inner()), &id, r) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await; // Retry-After: 1
                        }
                        tokio::time::sleep(Duration::from_millis(40)).await;
                    }
                    seen.lock().unwrap_or_else(|p| p.into_inner()).completed.insert(i);
                    i += workers;
                }
            })
        })
        .collect()
}

impl Seen {
    /// Read `topic` (the raw topic) until every event id answered 200 is there (60 s at
    /// most) and panic naming the ones that are not: a 200 must never be lost. Returns
    /// the records read.
    pub async fn assert_acknowledged_in(&self, bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
        use hookstream_schemas::{decode, RawWebhook};
        use rdkafka::Message;
        let mut in_topic = BTreeSet::new();
        let records = crate::kafka::read_until(bootstrap, topic, Duration::from_secs(60), |r| {
            if let Some(w) = r
                .last()
                .and_then(|m| m.payload())
                .and_then(|v| decode::<RawWebhook>(v).ok())
            {
                in_topic.insert(w.event_id);
            }
            self.acked.is_subset(&in_topic)
        })
        .await;
        let lost: Vec<_> = self.acked.difference(&in_topic).collect();
        assert!(lost.is_empty(), "answered 200 but not in the raw topic: {lost:?}");
        records
    }

    /// Read `topic` (the activations) until every completed payment's policy is there
    /// and check each has exactly its one deterministic activation id (that of the
    /// payment's completion, `evt_b<i>_3`). `context` is added to a failure's message
    /// (where the logs are).
    pub async fn assert_activated_once(&self, bootstrap: &str, topic: &str, context: &str) {
        use std::collections::BTreeMap;
        let (_, by) = crate::kafka::activations_by_policy(bootstrap, topic, self.completed.len()).await;
        let want: BTreeMap<String, BTreeSet<String>> = self
            .completed
            .iter()
            .map(|i| {
                let pol = format!("pol_b{i}");
                let id = hookstream_processor::rules::decide::activation_id(&pol, "paymenthub", &format!("evt_b{i}_3"));
                (pol, BTreeSet::from([id]))
            })
            .collect();
        let missing: Vec<_> = want.keys().filter(|p| !by.contains_key(*p)).take(10).collect();
        let wrong: Vec<_> = by
            .iter()
            .filter(|(p, ids)| want.get(*p) != Some(*ids))
            .take(10)
            .collect();
        assert!(
            missing.is_empty() && wrong.is_empty(),
            "one deterministic activation id per completed payment: {} of {} activated; missing \
             e.g. {missing:?}; unexpected or several ids: {wrong:?}; {context}",
            by.len(),
            want.len(),
        );
    }
}

impl Seen {
    /// Exactly once: beyond [`Seen::assert_activated_once`], a `read_committed` reader
    /// of `topic` sees each completed payment's activation once, never again.
    pub async fn assert_each_activation_delivered_once(&self, bootstrap: &str, topic: &str, context: &str) {
        self.assert_activated_once(bootstrap, topic, context).await;
        // Anything sent twice would be committed within a few commit intervals.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let counts = crate::kafka::activation_counts(bootstrap, topic).await;
        let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).take(10).collect();
        assert!(
            repeated.is_empty() && counts.len() == self.completed.len(),
            "a read_committed reader sees each activation once: {} ids for {} completed payments, \
             repeated e.g. {repeated:?}; {context}",
            counts.len(),
            self.completed.len()
        );
    }
}

/// Stop the providers of [`retrying_lifecycles`], let each finish the lifecycle it is in
/// (a worker panics when one of its events is never answered 200), and take what they saw.
pub async fn finish(
    stop: &tokio_util::sync::CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
    seen: &Mutex<Seen>,
) -> Seen {
    stop.cancel();
    for w in workers {
        if let Err(e) = w.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()))
}
