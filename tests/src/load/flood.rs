//! Hostile load for `loadgen flood`: connections that hold ingest's resources without
//! completing a request. Every connection sends headers that pass the checks made
//! before a body is read (a fresh timestamp, a signature of the right shape), then:
//! - `stall`: declares a 900 KiB body and sends none of it;
//! - `trickle`: declares 900 KiB and sends one byte every 500 ms;
//! - `bodies`: declares 900 KiB and sends 800 KiB of it at once, then waits.
//!
//! A connection that ingest answers or closes is opened again, until the time is up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DECLARED: usize = 900 * 1024;

/// What a flooding connection does after its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    Stall,
    Trickle,
    Bodies,
}

fn head(target: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "POST /webhooks/paymenthub HTTP/1.1\r\nhost: {target}\r\ncontent-length: {DECLARED}\r\nx-event-id: flood\r\n\
         x-timestamp: {now}\r\nx-signature: sha256={}\r\n\r\n",
        "0".repeat(64)
    )
}

/// One connection's life: the attack until ingest answers (its status) or closes.
async fn one(target: &str, attack: Attack, until: tokio::time::Instant) -> Option<u16> {
    let mut s = TcpStream::connect(target).await.ok()?;
    s.write_all(head(target).as_bytes()).await.ok()?;
    if attack == Attack::Bodies {
        s.write_all(&vec![b' '; 800 * 1024]).await.ok()?;
    }
    let mut buf = [0u8; 512];
    loop {
        let wait = tokio::time::Instant::now() + Duration::from_millis(500);
        tokio::select! {
            r = s.read(&mut buf) => {
                let n = r.ok()?;
                let text = String::from_utf8_lossy(&buf[..n]);
                return text.get(9..12).and_then(|c| c.parse().ok());
            }
            () = tokio::time::sleep_until(wait.min(until)) => {
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                if attack == Attack::Trickle && s.write_all(b" ").await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Keep `connections` flooding connections open against `target` for `seconds`; the
/// answers ingest gave them, by status (0: closed without an answer).
pub async fn run(target: String, attack: Attack, connections: usize, seconds: f64) -> BTreeMap<u16, u64> {
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let answers = Arc::new(Mutex::new(BTreeMap::new()));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (target, answers) = (target.clone(), answers.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    let status = one(&target, attack, until).await;
                    if tokio::time::Instant::now() >= until {
                        break;
                    }
                    *answers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(status.unwrap_or(0))
                        .or_insert(0) += 1;
                    if status.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let out = answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    out
}
