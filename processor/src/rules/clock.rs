//! Event time: each partition's clock is a fold of its record times, so the same log
//! gives the same clock at every record whatever the batch boundaries.
//!
//! The clock is the highest record time seen, except that a record more than
//! `max_ahead` ahead of the clock moves it by `max_ahead` only: one record with a
//! far-future time (a skewed producer clock) cannot age every dedup key of the
//! partition at once. Dedup entries expire against this clock, in the fold
//! ([`is_expired`]), and the store's sweep only removes what is already expired.

/// The partition's clock after a record with time `record_ms`, given the clock before
/// it (`None`: the partition's first record).
pub fn advance(clock: Option<i64>, record_ms: i64, max_ahead_ms: i64) -> i64 {
    match clock {
        None => record_ms,
        Some(c) => c.max(record_ms.min(c.saturating_add(max_ahead_ms.max(0)))),
    }
}

/// Whether an entry first seen at `first_seen_ms` is past the window at `clock_ms`.
pub fn is_expired(first_seen_ms: i64, clock_ms: i64, window_ms: i64) -> bool {
    clock_ms.saturating_sub(first_seen_ms) > window_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_only_moves_forward_and_a_far_future_time_moves_it_by_the_bound() {
        assert_eq!(advance(None, 1_000, 60), 1_000);
        assert_eq!(advance(Some(1_000), 1_030, 60), 1_030);
        assert_eq!(
            advance(Some(1_000), 900, 60),
            1_000,
            "an older record does not move it back"
        );
        assert_eq!(
            advance(Some(1_000), i64::MAX, 60),
            1_060,
            "far future: by the bound only"
        );
        assert_eq!(advance(Some(i64::MAX - 1), i64::MAX, 60), i64::MAX);
    }

    #[test]
    fn expiry_is_strictly_past_the_window() {
        assert!(!is_expired(0, 10, 10));
        assert!(is_expired(0, 11, 10));
        assert!(!is_expired(i64::MIN, i64::MIN, 10));
    }
}
