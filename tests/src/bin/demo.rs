//! `demo`: send a few signed demo payments through ingest, the way providers would,
//! and print each answer. Used by `infra/run.sh`.
//!
//! ```sh
//! demo [--ingest 127.0.0.1:8080]
//! ```
//! Secrets come from the same environment variables ingest reads.

use hookstream_tests::{http::post, sign};

struct Event {
    source: &'static str,
    scheme: &'static str,
    secret_env: &'static str,
    id: &'static str,
    payment: &'static str,
    seq: Option<i64>,
    ty: &'static str,
    policy: Option<&'static str>,
    note: &'static str,
}

const EVENTS: &[Event] = &[
    Event {
        source: "paymenthub",
        scheme: "hmac-sha256",
        secret_env: "PAYMENTHUB_WEBHOOK_SECRET",
        id: "evt_demo_1_1",
        payment: "pay_demo_1",
        seq: Some(1),
        ty: "payment.created",
        policy: Some("pol_demo_1"),
        note: "in order",
    },
    Event {
        source: "paymenthub",
        scheme: "hmac-sha256",
        secret_env: "PAYMENTHUB_WEBHOOK_SECRET",
        id: "evt_demo_1_2",
        payment: "pay_demo_1",
        seq: Some(2),
        ty: "payment.processing",
        policy: Some("pol_demo_1"),
        note: "in order",
    },
    Event {
        source: "paymenthub",
        scheme: "hmac-sha256",
        secret_env: "PAYMENTHUB_WEBHOOK_SECRET",
        id: "evt_demo_1_3",
        payment: "pay_demo_1",
        seq: Some(3),
        ty: "payment.completed",
        policy: Some("pol_demo_1"),
        note: "completes: activates pol_demo_1",
    },
    Event {
        source: "paymenthub",
        scheme: "hmac-sha256",
        secret_env: "PAYMENTHUB_WEBHOOK_SECRET",
        id: "evt_demo_1_3",
        payment: "pay_demo_1",
        seq: Some(3),
        ty: "payment.completed",
        policy: Some("pol_demo_1"),
        note: "duplicate delivery: no second activation",
    },
    Event {
        source: "standard",
        scheme: "standard-webhooks",
        secret_env: "STANDARD_WEBHOOK_SECRET",
        id: "msg_demo_2_2",
        payment: "pay_demo_2",
        seq: Some(2),
        ty: "payment.completed",
        policy: Some("pol_demo_2"),
        note: "out of order: held until sequence 1",
    },
    Event {
        source: "standard",
        scheme: "standard-webhooks",
        secret_env: "STANDARD_WEBHOOK_SECRET",
        id: "msg_demo_2_1",
        payment: "pay_demo_2",
        seq: Some(1),
        ty: "payment.created",
        policy: Some("pol_demo_2"),
        note: "fills the gap: activates pol_demo_2",
    },
    Event {
        source: "stripe",
        scheme: "stripe",
        secret_env: "STRIPE_WEBHOOK_SECRET",
        id: "evt_demo_3",
        payment: "pay_demo_3",
        seq: None,
        ty: "payment.failed",
        policy: Some("pol_demo_3"),
        note: "failed: no activation",
    },
    Event {
        source: "github",
        scheme: "github",
        secret_env: "GITHUB_WEBHOOK_SECRET",
        id: "gh_demo_4",
        payment: "pay_demo_4",
        seq: None,
        ty: "payment.completed",
        policy: None,
        note: "no policy: dead-lettered (no_policy)",
    },
];

/// Send the demo's signed webhooks to ingest and print each answer.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Ingest's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    ingest: String,
}

#[tokio::main]
async fn main() {
    let ingest = <Cli as clap::Parser>::parse().ingest;
    let mut failed = false;
    for e in EVENTS {
        let Ok(secrets) = std::env::var(e.secret_env) else {
            eprintln!("{} is not set", e.secret_env);
            std::process::exit(2);
        };
        let secret = secrets.split_whitespace().next().unwrap_or_default();
        let body = sign::payment_body(e.id, e.payment, e.seq, e.ty, e.policy);
        let headers = sign::sign(e.scheme, secret, e.id, sign::now(), &body);
        let r = post(&ingest, &format!("/webhooks/{}", e.source), &headers, body).await;
        failed |= r.status != 200;
        println!(
            "{:<11} {:<11} {:<19} seq={:<4} -> {} {}   ({})",
            e.source,
            e.payment,
            e.ty,
            e.seq.map_or("-".into(), |s| s.to_string()),
            r.status.as_u16(),
            String::from_utf8_lossy(&r.body),
            e.note
        );
    }
    if failed {
        std::process::exit(1);
    }
}
