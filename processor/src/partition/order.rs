//! Offset order for one partition's worker (pure): every offset is decided once, in
//! increasing order, and none is skipped.
//!
//! Records can reach a worker out of offset order: records fetched through the group
//! consumer before the partition's own queue was split off come after newer ones, so a
//! delivered batch can start past the next undecided offset. The worker sorts what it
//! received, drops what it already decided, and reads a hole from the log before the
//! records after it.

/// One step of folding a delivered batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read `[from, until)` from the log first: the delivery skipped them.
    Refetch { from: i64, until: i64 },
    /// Decide these records of the arranged batch (contiguous offsets).
    Decide(std::ops::Range<usize>),
}

/// Sort `batch` by offset, drop repeats and everything below `next` (already decided).
pub fn arrange<T>(mut batch: Vec<T>, next: Option<i64>, offset: impl Fn(&T) -> i64) -> Vec<T> {
    batch.sort_by_key(&offset);
    batch.dedup_by_key(|t| offset(t));
    if let Some(n) = next {
        batch.retain(|t| offset(t) >= n);
    }
    batch
}

/// The steps that fold an arranged batch with offsets `offsets`, the next undecided
/// offset being `next` (`None`: not known, the first record starts).
pub fn plan(next: Option<i64>, offsets: &[i64]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut expect = next;
    let mut start = 0;
    for (i, &o) in offsets.iter().enumerate() {
        if let Some(e) = expect.filter(|e| o > *e) {
            if i > start {
                steps.push(Step::Decide(start..i));
            }
            steps.push(Step::Refetch { from: e, until: o });
            start = i;
        }
        expect = Some(o + 1);
    }
    if offsets.len() > start {
        steps.push(Step::Decide(start..offsets.len()));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_delivery_is_decided_in_offset_order_once() {
        // Offsets 7 and 5 fetched before the split arrive after newer ones; 3 was decided.
        let batch = arrange(vec![7, 5, 8, 6, 3, 7], Some(5), |o| *o);
        assert_eq!(batch, vec![5, 6, 7, 8]);
        assert_eq!(plan(Some(5), &batch), vec![Step::Decide(0..4)]);
    }

    #[test]
    fn holes_are_read_from_the_log_before_what_follows_them() {
        assert_eq!(
            plan(Some(5), &[5, 8, 9, 12]),
            vec![
                Step::Decide(0..1),
                Step::Refetch { from: 6, until: 8 },
                Step::Decide(1..3),
                Step::Refetch { from: 10, until: 12 },
                Step::Decide(3..4),
            ]
        );
        assert_eq!(
            plan(Some(2), &[4]),
            vec![Step::Refetch { from: 2, until: 4 }, Step::Decide(0..1)]
        );
        assert_eq!(plan(None, &[4, 5]), vec![Step::Decide(0..2)]);
        assert!(plan(Some(4), &[]).is_empty());
    }
}
