//! Realistic webhook traffic: payment lifecycles (created → processing → completed |
//! failed, some completed ones refunded later), each paying for a policy, interleaved
//! across payments, with configurable fractions of duplicate deliveries and
//! out-of-order sends.

use std::collections::HashMap;

use crate::sign::payment_body;

/// Shape of the traffic.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Fraction of payments that fail instead of completing.
    pub failed: f64,
    /// Fraction of completed payments refunded afterwards.
    pub refunded: f64,
    /// Fraction of events delivered a second time (same id and body), later.
    pub duplicates: f64,
    /// Fraction of payments whose `processing` and `completed` are sent swapped.
    pub out_of_order: f64,
    /// Payments in flight together (their events interleave).
    pub interleave: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            failed: 0.1,
            refunded: 0.05,
            duplicates: 0.05,
            out_of_order: 0.05,
            interleave: 64,
        }
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Planned {
    pub event_id: String,
    pub payment_id: String,
    pub body: Vec<u8>,
}

/// What a correct pipeline must produce for the planned traffic.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// policy_id → (payment_id, event id of the completed event): exactly one activation each.
    pub activations: HashMap<String, (String, String)>,
}

/// A small deterministic generator (xorshift64*), so runs are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Plan about `events` requests for run `run` (a prefix that keeps ids unique across runs).
pub fn plan(run: &str, events: usize, mix: &Mix, seed: u64) -> (Vec<Planned>, Expected) {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(events + events / 10);
    let mut expected = Expected::default();
    let mut dups: Vec<(usize, Planned)> = Vec::new();
    let mut payment = 0usize;
    while out.len() < events {
        // One group of payments whose events interleave: all first events, then all second, ...
        let group: Vec<Vec<Planned>> = (0..mix.interleave.max(1))
            .map(|_| {
                payment += 1;
                let pay = format!("pay_{run}_{payment}");
                let pol = format!("pol_{run}_{payment}");
                let fails = rng.unit() < mix.failed;
                let mut steps = vec!["payment.created", "payment.processing"];
                steps.push(if fails { "payment.failed" } else { "payment.completed" });
                if !fails && rng.unit() < mix.refunded {
                    steps.push("payment.refunded");
                }
                let mut evs: Vec<Planned> = steps
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| {
                        let id = format!("evt_{run}_{payment}_{}", i + 1);
                        Planned {
                            body: payment_body(&id, &pay, Some(i as i64 + 1), ty, Some(&pol)),
                            event_id: id,
                            payment_id: pay.clone(),
                        }
                    })
                    .collect();
                if !fails {
                    expected
                        .activations
                        .insert(pol, (pay.clone(), format!("evt_{run}_{payment}_3")));
                }
                if rng.unit() < mix.out_of_order {
                    evs.swap(1, 2);
                }
                evs
            })
            .collect();
        let longest = group.iter().map(Vec::len).max().unwrap_or(0);
        for step in 0..longest {
            for evs in &group {
                if let Some(e) = evs.get(step) {
                    if rng.unit() < mix.duplicates {
                        // Re-delivered a little later, as a provider's retry would be.
                        dups.push((out.len() + 1 + (rng.next_u64() % 200) as usize, e.clone()));
                    }
                    out.push(e.clone());
                    while let Some(pos) = dups.iter().position(|(at, _)| *at <= out.len()) {
                        out.push(dups.swap_remove(pos).1);
                    }
                }
            }
        }
    }
    out.extend(dups.into_iter().map(|(_, e)| e));
    (out, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_keeps_per_payment_events_and_expects_one_activation_per_completed_payment() {
        let mix = Mix {
            failed: 0.5,
            refunded: 0.0,
            duplicates: 0.2,
            out_of_order: 0.0,
            interleave: 8,
        };
        let (events, expected) = plan("t", 300, &mix, 7);
        assert!(events.len() >= 300);
        assert!(!expected.activations.is_empty());
        for (pay, completed) in expected.activations.values() {
            assert!(events.iter().any(|e| &e.event_id == completed && &e.payment_id == pay));
        }
        let distinct: std::collections::HashSet<_> = events.iter().map(|e| &e.event_id).collect();
        assert!(distinct.len() < events.len(), "some duplicates were planned");
    }
}
