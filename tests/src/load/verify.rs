//! `--verify`: read `policy.activations` while the load runs and check that every
//! completed payment with a policy got exactly one activation (one distinct id per
//! policy), and measure end-to-end latency: ingest's received-at of the completed
//! webhook → the activation readable by a consumer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hookstream_schemas::{decode, PolicyEvent, PolicyEventKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::workload::Expected;

/// A consumer positioned at the end of the activations topic, started before the load.
pub struct Verifier {
    consumer: StreamConsumer,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

/// What verification found.
#[derive(Debug)]
pub struct Verdict {
    pub expected: usize,
    pub activated: usize,
    pub missing: Vec<String>,
    /// Policies with more than one distinct activation id.
    pub conflicting: Vec<String>,
    /// Activation records received (re-sends with the same id included).
    pub records: usize,
    pub e2e_ms: Histogram<u64>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.conflicting.is_empty()
    }

    pub fn json(&self) -> serde_json::Value {
        let q = |p: f64| self.e2e_ms.value_at_quantile(p);
        serde_json::json!({
            "mode": "verify",
            "passed": self.passed(),
            "expected_activations": self.expected,
            "activated_policies": self.activated,
            "activation_records": self.records,
            "missing": self.missing.len(),
            "conflicting": self.conflicting.len(),
            "e2e_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": self.e2e_ms.max() },
        })
    }
}

impl Verifier {
    /// Position at the current end of every partition of `topic`; fetch every
    /// `fetch_wait_ms` at most (see below).
    pub fn start(brokers: &str, topic: &str, fetch_wait_ms: u32) -> Result<Self, rdkafka::error::KafkaError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("loadgen-verify-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            // See an activation soon after it is readable, not up to 500 ms later; but not
            // every few ms: every fetch costs the broker CPU that the pipeline under test
            // needs on the same cores (10 ms: 100 fetches/s). Adds up to this much to the
            // measured end-to-end latency.
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        let mut tpl = TopicPartitionList::new();
        for p in 0..n as i32 {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer })
    }

    /// Collect activations until every expected one arrived, or `give_up` fires and a
    /// further `grace` passes.
    pub async fn run(self, expected: Expected, give_up: oneshot::Receiver<()>, grace: Duration) -> Verdict {
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        let mut e2e = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("valid histogram bounds");
        let mut records = 0;
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut give_up = Some(give_up);
        loop {
            let complete = expected.activations.keys().all(|p| seen.contains_key(p));
            if complete {
                break;
            }
            let recv = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, self.consumer.recv()).await.ok(),
                    None => Some(self.consumer.recv().await),
                }
            };
            tokio::select! {
                r = recv => match r {
                    None => break,
                    Some(Err(_)) => continue,
                    Some(Ok(m)) => {
                        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
                        let Some(Ok(ev)) = m.payload().map(decode::<PolicyEvent>) else { continue };
                        if let PolicyEventKind::Activated(a) = ev.event {
                            if expected.activations.contains_key(&a.policy_id) {
                                records += 1;
                                let _ = e2e.record((now_ms - a.activated_at).max(1) as u64);
                                seen.entry(a.policy_id).or_default().insert(a.activation_id);
                            }
                        }
                    }
                },
                _ = async { if let Some(g) = give_up.as_mut() { let _ = g.await; } else { std::future::pending::<()>().await } } => {
                    give_up = None;
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
            }
        }
        let missing: Vec<String> = expected
            .activations
            .keys()
            .filter(|p| !seen.contains_key(*p))
            .cloned()
            .collect();
        let mut conflicting: Vec<String> = seen
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(p, _)| p.clone())
            .collect();
        conflicting.sort();
        Verdict {
            expected: expected.activations.len(),
            activated: seen.len(),
            missing,
            conflicting,
            records,
            e2e_ms: e2e,
        }
    }
}
