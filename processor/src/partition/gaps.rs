//! The wall-clock side of sequence gaps for one partition: which payments hold events,
//! since when, and which gaps are due for a `GapTimeout` control record. The decision
//! itself is made only when that record is read back from the log (`decide`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

struct Watch {
    opened: SystemTime,
    next_expected: i64,
    held: i64,
    requested: Option<Instant>,
}

/// A gap due for a control record.
#[derive(Debug, Clone)]
pub struct Due {
    /// The payment's key ([`crate::rules::model::payment_key`]).
    pub key: String,
    pub next_expected: i64,
    pub opened: SystemTime,
}

/// Open gaps of one partition's payments.
#[derive(Default)]
pub struct Gaps {
    watches: HashMap<String, Watch>,
}

impl std::fmt::Debug for Gaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gaps").field("open", &self.watches.len()).finish()
    }
}

impl Gaps {
    /// Track (or stop tracking) the open gap of the payment with this key.
    pub fn watch(&mut self, payment_id: &str, next_expected: i64, held: i64) {
        if held == 0 {
            self.watches.remove(payment_id);
            return;
        }
        let fresh = || Watch {
            opened: SystemTime::now(),
            next_expected,
            held,
            requested: None,
        };
        let w = self.watches.entry(payment_id.to_owned()).or_insert_with(fresh);
        if w.next_expected != next_expected {
            // Part of the gap filled: what is still missing is a new gap.
            *w = fresh();
        }
        w.held = held;
    }

    /// Events held across the partition.
    pub fn held_total(&self) -> i64 {
        self.watches.values().map(|w| w.held).sum()
    }

    /// Gaps open for `timeout` whose control record was not asked for within `timeout`.
    pub fn due(&self, timeout: Duration) -> Vec<Due> {
        let now = SystemTime::now();
        self.watches
            .iter()
            .filter(|(_, w)| now.duration_since(w.opened).unwrap_or_default() >= timeout)
            .filter(|(_, w)| w.requested.is_none_or(|r| r.elapsed() >= timeout))
            .map(|(p, w)| Due {
                key: p.clone(),
                next_expected: w.next_expected,
                opened: w.opened,
            })
            .collect()
    }

    /// The control record for `payment_id` was written.
    pub fn requested(&mut self, payment_id: &str) {
        if let Some(w) = self.watches.get_mut(payment_id) {
            w.requested = Some(Instant::now());
        }
    }
}
