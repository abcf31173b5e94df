//! `loadgen`: measure hookstream with realistic, signed webhook traffic.
//!
//! ```text
//! loadgen send     --target 127.0.0.1:8080 [--rate 5000 --duration 60 | --closed --events N]
//!                  [--connections 64] [--source paymenthub --scheme hmac-sha256 --secret-env PAYMENTHUB_WEBHOOK_SECRET]
//!                  [--duplicates 0.05 --out-of-order 0.05 --failed 0.1 --refunded 0.05]
//!                  [--verify --brokers 127.0.0.1:9092 --activations-topic policy.activations --verify-grace 30
//!                   --verify-fetch-wait-ms 100]
//! loadgen produce  --brokers B --topic T --events N [--in-flight 10000]    bare rdkafka producer baseline / preload
//! loadgen consume  --brokers B --topic T                                    bare consumer baseline
//! ```
//! Every mode prints one JSON object with its numbers on stdout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hookstream_tests::load::{baseline, sender, verify, wire, workload};

struct Args(HashMap<String, String>);

impl Args {
    fn parse() -> (String, Args) {
        let mut it = std::env::args().skip(1);
        let mode = it.next().unwrap_or_default();
        let mut m = HashMap::new();
        let mut key: Option<String> = None;
        for a in it {
            if let Some(k) = a.strip_prefix("--") {
                if let Some(prev) = key.replace(k.to_owned()) {
                    m.insert(prev, "true".to_owned());
                }
            } else if let Some(k) = key.take() {
                m.insert(k, a);
            }
        }
        if let Some(k) = key {
            m.insert(k, "true".to_owned());
        }
        (mode, Args(m))
    }
    fn str(&self, k: &str, d: &str) -> String {
        self.0.get(k).cloned().unwrap_or_else(|| d.to_owned())
    }
    fn num<T: std::str::FromStr>(&self, k: &str, d: T) -> T {
        match self.0.get(k) {
            None => d,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| die(&format!("--{k} {v:?} is not a number"))),
        }
    }
    fn flag(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
}

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2)
}

fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{t:x}")
}

#[tokio::main]
async fn main() {
    let (mode, a) = Args::parse();
    let mix = workload::Mix {
        failed: a.num("failed", 0.1),
        refunded: a.num("refunded", 0.05),
        duplicates: a.num("duplicates", 0.05),
        out_of_order: a.num("out-of-order", 0.05),
        interleave: a.num("interleave", 64),
    };
    let brokers = a.str("brokers", "127.0.0.1:9092");
    let out = match mode.as_str() {
        "send" => {
            let closed = a.flag("closed");
            let rate: f64 = a.num("rate", 5000.0);
            let events = if closed {
                a.num("events", 100_000)
            } else {
                (rate * a.num("duration", 60.0)) as usize
            };
            let secret_env = a.str("secret-env", "PAYMENTHUB_WEBHOOK_SECRET");
            let secret =
                a.0.get("secret")
                    .cloned()
                    .or_else(|| std::env::var(&secret_env).ok())
                    .unwrap_or_else(|| die(&format!("set {secret_env} or --secret")));
            let signer = wire::Signer {
                source: a.str("source", "paymenthub"),
                scheme: a.str("scheme", "hmac-sha256"),
                secret: secret.split_whitespace().next().unwrap_or_default().to_owned(),
            };
            let (planned, expected) = workload::plan(&run_id(), events, &mix, a.num("seed", 42));
            let planned = Arc::new(planned);
            let verifier = if a.flag("verify") {
                let topic = a.str("activations-topic", "policy.activations");
                let fetch_wait_ms: u32 = a.num("verify-fetch-wait-ms", 100);
                Some(
                    verify::Verifier::start(&brokers, &topic, fetch_wait_ms)
                        .unwrap_or_else(|e| die(&format!("verify: {e}"))),
                )
            } else {
                None
            };
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let grace = Duration::from_secs(a.num("verify-grace", 30));
            let verdict = verifier.map(|v| tokio::spawn(v.run(expected, done_rx, grace)));
            let target = a.str("target", "127.0.0.1:8080");
            let connections = a.num("connections", 64);
            let report = if closed {
                sender::closed_loop(&target, signer, planned, connections).await
            } else {
                sender::open_loop(&target, signer, planned, rate, connections).await
            };
            let _ = done_tx.send(());
            let mut j = report.json(if closed { "closed" } else { "open" });
            if !closed {
                j["target_rps"] = rate.into();
            }
            if let Some(v) = verdict {
                let v = v.await.unwrap_or_else(|e| die(&format!("verifier: {e}")));
                j["verify"] = v.json();
                if !v.passed() {
                    println!("{j}");
                    eprintln!(
                        "verification FAILED: missing {:?}.. conflicting {:?}..",
                        &v.missing.iter().take(5).collect::<Vec<_>>(),
                        &v.conflicting.iter().take(5).collect::<Vec<_>>()
                    );
                    std::process::exit(1);
                }
            }
            j
        }
        "produce" => {
            let topic = a.str("topic", "payments.webhooks.raw");
            let (planned, _) = workload::plan(&run_id(), a.num("events", 100_000), &mix, a.num("seed", 42));
            let (n, secs, bytes) =
                baseline::produce(&brokers, &topic, Arc::new(planned), a.num("in-flight", 10_000)).await;
            serde_json::json!({ "mode": "produce", "records": n, "elapsed_s": secs, "throughput_rps": n as f64 / secs, "mean_value_bytes": bytes })
        }
        "consume" => {
            let topic = a.str("topic", "payments.webhooks.raw");
            let (n, secs) = baseline::consume_all(&brokers, &topic).await;
            serde_json::json!({ "mode": "consume", "records": n, "elapsed_s": secs, "throughput_rps": n as f64 / secs })
        }
        _ => die("mode must be send, produce or consume (see the doc comment in tests/src/bin/loadgen.rs)"),
    };
    println!("{out}");
}
