//! Reading a request body within bounds: the source's size limit, a budget of buffered
//! body bytes shared by every request, and a minimum transfer rate.
//!
//! The in-flight bound counts requests, not bytes: with the defaults, 8,192 requests ×
//! 900 KiB would be 7 GiB, and anyone can open them, signed or not. So a body is
//! charged against [`BodyBudget`] before it is read (its `Content-Length`) or as it
//! arrives (chunked), for the whole time the request is processed; a request that does
//! not fit is answered at once (429 `body_budget_exhausted` + `Retry-After`) instead of
//! growing memory. And a sender must keep up a minimum rate (after a grace period), so a
//! trickle of bytes cannot hold an in-flight permit for the whole body timeout.
//!
//! Each peer address may hold only its share of the budget ([`crate::peer`]): the
//! budget is charged before the signature can be checked, so without a share one
//! sender's declared bodies would starve every signed webhook.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::Reject;
use crate::peer::{PeerLedger, PeerShare};

/// Bytes of memory charged per body byte: the body, its copy in the `RawWebhook`
/// record, and the encoded value, which live together until the broker answers.
pub const COPIES: usize = 3;

/// The budget's unit: permits are KiB, so a budget of GiBs fits a semaphore.
const UNIT: usize = 1024;

/// Memory for request bodies, shared by every request, each peer within its share.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: usize,
    peers: Arc<PeerLedger>,
}

/// What one body holds of the budget (shared and its peer's share) until dropped.
#[derive(Debug, Default)]
pub struct Charge {
    shared: Option<OwnedSemaphorePermit>,
    peer: Option<PeerShare>,
}

impl BodyBudget {
    /// A budget of `bytes` (at least one unit), of which one peer may hold
    /// `per_peer_bytes` at most (`0`: no per-peer bound).
    pub fn new(bytes: usize, per_peer_bytes: usize) -> Self {
        let total_kib = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        let per_peer_kib = if per_peer_bytes == 0 {
            0
        } else {
            (per_peer_bytes / UNIT).max(1)
        };
        Self {
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
            peers: PeerLedger::new(per_peer_kib),
        }
    }

    /// The budget a body of `body_bytes` holds (× [`COPIES`]), in units.
    fn units(&self, body_bytes: usize) -> usize {
        body_bytes.saturating_mul(COPIES).div_ceil(UNIT).min(self.total_kib)
    }

    fn take_units(&self, kib: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(kib).ok()?;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Grow `held` (the charge of a body of `before` bytes from `peer`, or nothing yet)
    /// to cover `after` bytes: by bytes, not per chunk, so a body sent in 1-byte chunks
    /// holds what it sent. `false` when the budget or the peer's share lacks it; the
    /// request then ends, and dropping `held` gives back all it took.
    fn grow(&self, held: &mut Charge, peer: Option<IpAddr>, before: usize, after: usize) -> bool {
        let started = held.shared.is_some();
        let more = self
            .units(after)
            .saturating_sub(if started { self.units(before) } else { 0 });
        if more == 0 && started {
            return true;
        }
        if let Some(ip) = peer {
            if !self.peers.grow(&mut held.peer, ip, more) {
                return false;
            }
        }
        let Some(p) = self.take_units(more) else { return false };
        match held.shared.as_mut() {
            Some(h) => h.merge(p),
            None => held.shared = Some(p),
        }
        true
    }

    /// Bytes charged right now.
    pub fn used_bytes(&self) -> usize {
        (self.total_kib - self.kib.available_permits()) * UNIT
    }
}

/// The bounds one body is read within.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The source's body limit.
    pub max_bytes: usize,
    /// The whole body must arrive within this.
    pub deadline: Duration,
    /// Time before the minimum rate applies.
    pub grace: Duration,
    /// Bytes per second a sender must average after the grace period.
    pub min_bytes_per_sec: u64,
}

impl BodyLimits {
    /// How long after the start `received` bytes may have taken.
    fn allowance(&self, received: usize) -> Duration {
        let rate = self.min_bytes_per_sec.max(1);
        let earned = Duration::from_millis((received as u64).saturating_mul(1000) / rate);
        (self.grace + earned).min(self.deadline)
    }
}

/// A body read within its bounds, with the budget it holds until dropped.
#[derive(Debug)]
pub struct Body {
    pub bytes: Bytes,
    pub _charge: Charge,
}

/// Read `body` within `limits`, charging `budget` and the share of `peer` (`declared`:
/// its `Content-Length`).
pub async fn read(
    budget: &BodyBudget,
    limits: BodyLimits,
    peer: Option<IpAddr>,
    declared: Option<u64>,
    mut body: Incoming,
) -> Result<Body, Reject> {
    let too_large = Reject::PayloadTooLarge {
        limit_bytes: limits.max_bytes,
    };
    let declared = match declared {
        Some(n) if n > limits.max_bytes as u64 => return Err(too_large),
        Some(n) => Some(n as usize),
        None => None,
    };
    let mut charge = Charge::default();
    if let Some(n) = declared {
        if !budget.grow(&mut charge, peer, 0, n) {
            return Err(Reject::BodyBudgetExhausted);
        }
    }
    let mut charged = declared.unwrap_or(0);
    let start = Instant::now();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
    loop {
        let until = start + limits.allowance(buf.len());
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => return Err(Reject::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Reject::BodyRead),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let len = buf.len() + data.len();
        if len > limits.max_bytes {
            return Err(too_large);
        }
        if len > charged {
            if !budget.grow(&mut charge, peer, charged, len) {
                return Err(Reject::BodyBudgetExhausted);
            }
            charged = len;
        }
        buf.extend_from_slice(&data);
    }
    Ok(Body {
        bytes: buf.freeze(),
        _charge: charge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    fn take(b: &BodyBudget, peer: Option<IpAddr>, bytes: usize) -> Option<Charge> {
        let mut c = Charge::default();
        b.grow(&mut c, peer, 0, bytes).then_some(c)
    }

    #[test]
    fn the_budget_charges_every_copy_and_refuses_what_does_not_fit() {
        let b = BodyBudget::new(30 * 1024, 0);
        let first = take(&b, PEER, 5 * 1024).expect("15 KiB of 30");
        assert_eq!(b.used_bytes(), 15 * 1024);
        assert!(take(&b, PEER, 6 * 1024).is_none(), "18 KiB more does not fit");
        let second = take(&b, PEER, 5 * 1024).expect("the last 15 KiB");
        drop(first);
        drop(second);
        assert_eq!(b.used_bytes(), 0, "released when the request ends");
    }

    #[test]
    fn one_peer_holds_only_its_share_and_another_peer_still_fits() {
        let b = BodyBudget::new(300 * 1024, 40 * 1024);
        let flood: Vec<Charge> = std::iter::from_fn(|| take(&b, PEER, 6 * 1024)).take(10).collect();
        assert_eq!(flood.len(), 2, "18 KiB each: two fit in a 40 KiB share");
        let other = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)));
        let signed = take(&b, other, 6 * 1024).expect("another peer's body fits");
        drop(flood);
        drop(signed);
        assert_eq!(b.used_bytes(), 0);
        assert!(take(&b, PEER, 6 * 1024).is_some(), "the share is given back too");
    }

    #[test]
    fn a_body_in_one_byte_chunks_holds_what_it_sent_not_a_unit_per_chunk() {
        let b = BodyBudget::new(30 * 1024, 0);
        let mut held = Charge::default();
        for sent in 0..2_000usize {
            assert!(b.grow(&mut held, PEER, sent, sent + 1), "{sent}");
        }
        assert_eq!(
            b.used_bytes(),
            (2_000 * COPIES).div_ceil(UNIT) * UNIT,
            "6 KiB for 2,000 bytes"
        );
        drop(held);
        assert_eq!(b.used_bytes(), 0);
    }

    #[test]
    fn a_sender_earns_time_by_sending() {
        let l = BodyLimits {
            max_bytes: 1 << 20,
            deadline: Duration::from_secs(15),
            grace: Duration::from_secs(2),
            min_bytes_per_sec: 64 * 1024,
        };
        assert_eq!(l.allowance(0), Duration::from_secs(2));
        assert_eq!(l.allowance(64 * 1024), Duration::from_secs(3));
        assert_eq!(
            l.allowance(10 << 20),
            Duration::from_secs(15),
            "never past the deadline"
        );
    }
}
