//! Event time: each partition's clock is a fold of its record times, so the same log
//! gives the same clock at every record whatever the batch boundaries.
//!
//! The clock is the highest record time seen, except that a record more than
//! `max_ahead` ahead of the clock moves it by `max_ahead` only: one record with a
//! far-future time (a skewed producer clock) cannot age every dedup key of the
//! partition at once. Dedup entries expire against this clock, in the fold
//! ([`is_expired`]), and the store's sweep only removes what is already expired.
//!
//! A record time below [`EARLIEST_MS`] (Kafka's -1 for none, 0 from a producer that
//! sets none) is no time at all: it neither starts nor moves the clock, so a first
//! record stamped 0 cannot start the partition in 1970 and make every later record far
//! ahead.

/// Record times below this are taken as missing.
pub const EARLIEST_MS: i64 = 1;

/// The partition's clock after a record with time `record_ms`, given the clock before
/// it (`None`: the partition's first record). A clock below [`EARLIEST_MS`] has not
/// started: the first plausible record time starts it.
pub fn advance(clock: Option<i64>, record_ms: i64, max_ahead_ms: i64) -> i64 {
    let before = clock.unwrap_or(0);
    if record_ms < EARLIEST_MS {
        return before;
    }
    if before < EARLIEST_MS {
        return record_ms;
    }
    before.max(record_ms.min(before.saturating_add(max_ahead_ms.max(0))))
}

/// Whether an entry first seen at `first_seen_ms` is past the window at `clock_ms`.
pub fn is_expired(first_seen_ms: i64, clock_ms: i64, window_ms: i64) -> bool {
    clock_ms.saturating_sub(first_seen_ms) > window_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_764_000_000_000;

    #[test]
    fn the_clock_only_moves_forward_and_a_far_future_time_moves_it_by_the_bound() {
        assert_eq!(advance(None, T, 60), T);
        assert_eq!(advance(Some(T), T + 30, 60), T + 30);
        assert_eq!(
            advance(Some(T), T - 100, 60),
            T,
            "an older record does not move it back"
        );
        assert_eq!(advance(Some(T), i64::MAX, 60), T + 60, "far future: by the bound only");
        assert_eq!(advance(Some(i64::MAX - 1), i64::MAX, 60), i64::MAX);
    }

    #[test]
    fn a_record_without_a_plausible_time_neither_starts_nor_moves_the_clock() {
        assert_eq!(advance(None, 0, 60), 0, "not started");
        assert_eq!(advance(None, -1, 60), 0, "Kafka's 'no timestamp'");
        assert_eq!(
            advance(Some(0), T, 60),
            T,
            "the first real time starts it, not 60 ms after 1970"
        );
        assert_eq!(advance(Some(T), 0, 60), T);
    }

    #[test]
    fn expiry_is_strictly_past_the_window() {
        assert!(!is_expired(0, 10, 10));
        assert!(is_expired(0, 11, 10));
        assert!(!is_expired(i64::MIN, i64::MIN, 10));
    }
}
