//! Sending planned webhooks to ingest over many keep-alive connections, open loop (at a
//! fixed rate) or closed loop (as fast as answers come back).
//!
//! Open loop measures latency from each request's *intended* send time, not from when
//! it actually went out: when ingest slows down, the requests that queue behind count
//! their waiting too (no coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::wire::{encode, Conn, Signer};
use super::workload::Planned;
use crate::sign::now;

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
    /// Answers by HTTP status (0 = connection error).
    pub statuses: BTreeMap<u16, u64>,
    pub elapsed: Duration,
    pub sent: u64,
}

impl Report {
    fn new() -> Self {
        Self {
            // 1 µs to 120 s at 3 significant digits: constant, valid bounds.
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            elapsed: Duration::ZERO,
            sent: 0,
        }
    }

    fn merge(&mut self, other: &Report) {
        let _ = self.latency_us.add(&other.latency_us);
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.sent += other.sent;
    }

    /// Requests answered 2xx.
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// One JSON object with the numbers.
    pub fn json(&self, mode: &str) -> serde_json::Value {
        let q = |p: f64| self.latency_us.value_at_quantile(p) as f64 / 1000.0;
        serde_json::json!({
            "mode": mode,
            "sent": self.sent,
            "ok": self.ok(),
            "non_2xx": self.sent - self.ok(),
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_rps": self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9),
            "latency_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                            "max": self.latency_us.max() as f64 / 1000.0 },
        })
    }
}

/// Send one request on `conn` (reconnecting when needed); returns the status (0 when no
/// answer came, after one retry on a fresh connection).
async fn send_one(conn: &mut Option<Conn>, addr: &str, signer: &Signer, p: &Planned) -> u16 {
    let request = encode(addr, signer, p, now());
    for _ in 0..2 {
        if conn.as_ref().is_none_or(Conn::closing) {
            *conn = Conn::connect(addr).await.ok();
        }
        let Some(c) = conn.as_mut() else { return 0 };
        match c.exchange(&request).await {
            Ok(status) => return status,
            Err(_) => *conn = None,
        }
    }
    0
}

/// Open loop: request `i` is due at `start + i / rate`; connection `k` sends the
/// requests with `i % connections == k`.
pub async fn open_loop(addr: &str, signer: Signer, events: Arc<Vec<Planned>>, rate: f64, connections: usize) -> Report {
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for k in 0..connections {
        let (addr, signer, events) = (addr.to_owned(), signer.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let mut report = Report::new();
            let mut conn = Conn::connect(&addr).await.ok();
            let mut i = k;
            while i < events.len() {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let status = send_one(&mut conn, &addr, &signer, &events[i]).await;
                let us = due.elapsed().as_micros().max(1) as u64;
                let _ = report.latency_us.record(us.min(120_000_000));
                *report.statuses.entry(status).or_default() += 1;
                report.sent += 1;
                i += connections;
            }
            report
        }));
    }
    let mut total = Report::new();
    for t in tasks {
        if let Ok(r) = t.await {
            total.merge(&r);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Closed loop: every connection sends its next request as soon as the previous answer
/// arrives. Measures the maximum throughput.
pub async fn closed_loop(addr: &str, signer: Signer, events: Arc<Vec<Planned>>, connections: usize) -> Report {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..connections {
        let (addr, signer, events) = (addr.to_owned(), signer.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let mut report = Report::new();
            let mut conn = Conn::connect(&addr).await.ok();
            let mut i = k;
            while i < events.len() {
                let sent_at = Instant::now();
                let status = send_one(&mut conn, &addr, &signer, &events[i]).await;
                let _ = report.latency_us.record(sent_at.elapsed().as_micros().max(1) as u64);
                *report.statuses.entry(status).or_default() += 1;
                report.sent += 1;
                i += connections;
            }
            report
        }));
    }
    let mut total = Report::new();
    for t in tasks {
        if let Ok(r) = t.await {
            total.merge(&r);
        }
    }
    total.elapsed = start.elapsed();
    total
}
