//! `loadgen`: measure hookstream with realistic, signed webhook traffic.
//!
//! `loadgen send | produce | consume | flood | topic` (`loadgen --help`, `loadgen send
//! --help`): signed traffic through ingest with optional verification, the bare-client
//! baselines, hostile connections, and the benchmark scripts' topics.
//! Every mode prints one JSON object with its numbers on stdout.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hookstream_tests::load::{baseline, flood, sender, verify, wire, workload};

/// Measure hookstream with realistic, signed webhook traffic. Every mode prints one
/// JSON object with its numbers on stdout.
#[derive(Debug, Parser)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, global = true, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Send signed webhooks to ingest, open-loop at a rate or closed-loop, and optionally
    /// verify every expected activation on the output topic.
    Send(Send),
    /// Bare rdkafka producer baseline (or preload for a drain).
    Produce {
        #[arg(long, default_value = "payments.webhooks.raw")]
        topic: String,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Records in flight at most.
        #[arg(long, default_value_t = 10_000)]
        in_flight: usize,
        #[command(flatten)]
        mix: MixArgs,
    },
    /// An OTLP/HTTP receiver standing in for a collector (for the tracing benchmark):
    /// takes spans at `<listen>/v1/traces` until SIGINT, then prints how many, by service.
    OtlpSink {
        #[arg(long, default_value = "127.0.0.1:4318")]
        listen: String,
    },
    /// Create a topic (and wait until every partition is in the metadata), or delete one.
    Topic {
        #[arg(value_enum)]
        action: TopicAction,
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
    /// Bare consumer baseline: read the whole topic.
    Consume {
        #[arg(long, default_value = "payments.webhooks.raw")]
        topic: String,
    },
    /// Hostile connections that hold ingest's resources without completing a request
    /// (see `load/flood.rs`); prints the answers they got, by status.
    Flood {
        /// Ingest's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        target: String,
        #[arg(long, value_enum)]
        attack: flood::Attack,
        /// Connections kept open at once.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TopicAction {
    Create,
    Delete,
}

/// The traffic mix: fractions of payments, and how far events interleave.
#[derive(Debug, Args)]
struct MixArgs {
    /// Fraction of payments that fail.
    #[arg(long, default_value_t = 0.1)]
    failed: f64,
    /// Fraction of payments refunded after completing.
    #[arg(long, default_value_t = 0.05)]
    refunded: f64,
    /// Fraction of events sent twice.
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Fraction of events swapped with their successor.
    #[arg(long, default_value_t = 0.05)]
    out_of_order: f64,
    /// Payments in progress at once (events of different payments interleave).
    #[arg(long, default_value_t = 64)]
    interleave: usize,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl MixArgs {
    fn mix(&self) -> workload::Mix {
        workload::Mix {
            failed: self.failed,
            refunded: self.refunded,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            interleave: self.interleave,
        }
    }
}

#[derive(Debug, Args)]
struct Send {
    /// Ingest's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// Requests per second (open loop).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds to send for (open loop).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Closed loop: each connection sends its next request when answered.
    #[arg(long)]
    closed: bool,
    /// Events to send in closed loop.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// HTTP connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The source to sign for.
    #[arg(long, default_value = "paymenthub")]
    source: String,
    #[arg(long, default_value = "hmac-sha256")]
    scheme: String,
    /// Environment variable holding the secret (the first of several is used).
    #[arg(long, default_value = "PAYMENTHUB_WEBHOOK_SECRET")]
    secret_env: String,
    /// Verify the activations on the output topic.
    #[arg(long)]
    verify: bool,
    #[arg(long, default_value = "policy.activations")]
    activations_topic: String,
    /// Seconds to wait for the last activations after sending.
    #[arg(long, default_value_t = 30)]
    verify_grace: u64,
    /// The verifier's fetch.wait.max.ms.
    #[arg(long, default_value_t = 100)]
    verify_fetch_wait_ms: u32,
    #[command(flatten)]
    mix: MixArgs,
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
    let cli = Cli::parse();
    let brokers = cli.brokers;
    let out = match cli.mode {
        Mode::Send(a) => send(&brokers, a).await,
        Mode::Produce {
            topic,
            events,
            in_flight,
            mix,
        } => {
            let (planned, _) = workload::plan(&run_id(), events, &mix.mix(), mix.seed);
            let (n, secs, bytes) = baseline::produce(&brokers, &topic, Arc::new(planned), in_flight).await;
            serde_json::json!({ "mode": "produce", "records": n, "elapsed_s": secs, "throughput_rps": n as f64 / secs, "mean_value_bytes": bytes })
        }
        Mode::Flood {
            target,
            attack,
            connections,
            seconds,
        } => {
            let answers = flood::run(target, attack, connections, seconds).await;
            serde_json::json!({ "mode": "flood", "attack": format!("{attack:?}"), "connections": connections, "answers": answers })
        }
        Mode::OtlpSink { listen } => {
            let receiver = hookstream_tests::otlp::Receiver::start_on(&listen, false).await;
            let _ = tokio::signal::ctrl_c().await;
            let by_service = receiver.counts();
            let spans: usize = by_service.values().sum();
            serde_json::json!({ "mode": "otlp-sink", "spans": spans, "by_service": by_service })
        }
        Mode::Topic {
            action,
            name,
            partitions,
            replication,
        } => {
            match action {
                TopicAction::Create => {
                    hookstream_tests::kafka::create_replicated_topic(&brokers, &name, partitions, replication).await
                }
                TopicAction::Delete => hookstream_tests::kafka::delete_topic(&brokers, &name).await,
            }
            serde_json::json!({ "mode": "topic", "action": format!("{action:?}"), "name": name })
        }
        Mode::Consume { topic } => {
            let (n, secs) = baseline::consume_all(&brokers, &topic).await;
            serde_json::json!({ "mode": "consume", "records": n, "elapsed_s": secs, "throughput_rps": n as f64 / secs })
        }
    };
    println!("{out}");
}

async fn send(brokers: &str, a: Send) -> serde_json::Value {
    let events = if a.closed {
        a.events
    } else {
        (a.rate * a.duration) as usize
    };
    let secret = std::env::var(&a.secret_env).unwrap_or_else(|_| die(&format!("set {}", a.secret_env)));
    let signer = wire::Signer {
        source: a.source.clone(),
        scheme: a.scheme.clone(),
        secret: secret.split_whitespace().next().unwrap_or_default().to_owned(),
    };
    let (planned, expected) = workload::plan(&run_id(), events, &a.mix.mix(), a.mix.seed);
    let planned = Arc::new(planned);
    let verifier = a.verify.then(|| {
        verify::Verifier::start(brokers, &a.activations_topic, a.verify_fetch_wait_ms)
            .unwrap_or_else(|e| die(&format!("verify: {e}")))
    });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let grace = Duration::from_secs(a.verify_grace);
    let verdict = verifier.map(|v| tokio::spawn(v.run(expected, done_rx, grace)));
    let report = if a.closed {
        sender::closed_loop(&a.target, signer, planned, a.connections).await
    } else {
        sender::open_loop(&a.target, signer, planned, a.rate, a.connections).await
    };
    let _ = done_tx.send(());
    let mut j = report.json(if a.closed { "closed" } else { "open" });
    if !a.closed {
        j["target_rps"] = a.rate.into();
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
