//! What happened to a record, in either stage: the label of its metric and of its
//! history entry.

/// What happened to the record, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Held,
    Duplicate,
    /// The record itself was applied before (its dedup entry names its offset): the
    /// group's offset was moved back over it, a replay in place.
    Replayed,
    Superseded,
    DeadLettered,
    GapReleased,
    Ignored,
    /// Policy stage: a completed payment for a policy another payment holds.
    PaymentDuplicated,
}

impl Outcome {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Held => "held",
            Outcome::Duplicate => "duplicate",
            Outcome::Replayed => "replayed",
            Outcome::Superseded => "superseded",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::GapReleased => "gap_released",
            Outcome::Ignored => "ignored",
            Outcome::PaymentDuplicated => "payment_duplicated",
        }
    }
}
