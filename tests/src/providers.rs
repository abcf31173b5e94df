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
pub fn record(seen: &mut Seen, id: &str, answer: Result<http::Reply, String>) -> bool {
    match answer {
        Ok(r) if r.status == 200 => {
            seen.acked.insert(id.to_owned());
            return true;
        }
        Ok(r) if (r.status == 503 || r.status == 429) && r.headers.contains_key("retry-after") => seen.unavailable += 1,
        Ok(r) => seen
            .other
            .push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
        Err(e) => seen.other.push(e),
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
