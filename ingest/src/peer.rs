//! Each peer's share of a resource every request draws on.
//!
//! The body budget is charged before a signature can be checked (the signature covers
//! the body), so the pre-body checks are all that stand between an unauthenticated
//! sender and the budget: a shape and a timestamp the sender chooses. Without a share,
//! one address declaring a few large bodies holds the whole budget and every signed
//! webhook gets 429. With one, a flood from one address exhausts that address's share
//! only. Behind a proxy every request comes from the proxy's address: there the share
//! is switched off (`0`) and the proxy's own per-client limits apply.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The address a request came from, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// Units held per peer, each peer at most `limit` (`0`: no per-peer bound).
///
/// An address is in the map only while it holds units, so the map is bounded by the
/// requests in flight.
#[derive(Debug)]
pub struct PeerLedger {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// Units one request holds of its peer's share, given back when dropped.
#[derive(Debug)]
pub struct PeerShare {
    ledger: Arc<PeerLedger>,
    peer: IpAddr,
    units: usize,
}

impl PeerLedger {
    /// A ledger that lets each peer hold at most `limit` units (`0`: unbounded).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map is only ever updated in one step, so a panic elsewhere cannot leave it
        // half-written: a poisoned lock's data is still right.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add `units` to `share` (this request's units of `peer`), if the peer stays within
    /// its limit. `false` leaves everything as it was.
    pub fn grow(self: &Arc<Self>, share: &mut Option<PeerShare>, peer: IpAddr, units: usize) -> bool {
        if self.limit == 0 || units == 0 {
            return true;
        }
        let mut held = self.lock();
        let now = held.get(&peer).copied().unwrap_or(0);
        if now.saturating_add(units) > self.limit {
            return false;
        }
        held.insert(peer, now + units);
        drop(held);
        match share {
            Some(s) => s.units += units,
            None => {
                *share = Some(PeerShare {
                    ledger: self.clone(),
                    peer,
                    units,
                })
            }
        }
        true
    }

    /// Units `peer` holds right now.
    pub fn held(&self, peer: IpAddr) -> usize {
        self.lock().get(&peer).copied().unwrap_or(0)
    }
}

impl Drop for PeerShare {
    fn drop(&mut self) {
        let mut held = self.ledger.lock();
        if let Some(n) = held.get_mut(&self.peer) {
            *n = n.saturating_sub(self.units);
            if *n == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_peer_holds_at_most_its_share_and_others_keep_theirs() {
        let ledger = PeerLedger::new(10);
        let (mut a1, mut a2, mut b) = (None, None, None);
        assert!(ledger.grow(&mut a1, A, 6));
        assert!(!ledger.grow(&mut a2, A, 5), "6 + 5 is past A's 10");
        assert!(a2.is_none(), "a refusal holds nothing");
        assert!(ledger.grow(&mut a2, A, 4));
        assert!(ledger.grow(&mut b, B, 10), "B's share is its own");
        assert_eq!(ledger.held(A), 10);
        drop(a1);
        assert_eq!(ledger.held(A), 4, "given back when the request ends");
        drop(a2);
        drop(b);
        assert!(ledger.lock().is_empty(), "no entry for a peer that holds nothing");
    }

    #[test]
    fn a_limit_of_zero_bounds_nobody() {
        let ledger = PeerLedger::new(0);
        let mut s = None;
        assert!(ledger.grow(&mut s, A, usize::MAX));
        assert_eq!(ledger.held(A), 0);
    }
}
