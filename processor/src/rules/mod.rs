//! The rules: pure functions of the log. No rdkafka, no sled, no clock.
//!
//! [`fold`] is one whole step of each stage's fold (the clock, what is past its time,
//! the decision, the retention stamp), the one the partition loop, the tests' harness
//! and the fuzz target all run; [`input`] classifies a raw record, [`decide`] folds it
//! into its payment's state and says what to emit, [`ids`] derives every output id from the record that caused it,
//! [`limits`] bounds what one payment may hold, [`retention`] how long a state is kept, and [`fallback`] shrinks an output the
//! broker refuses for good into a dead letter it accepts. Because nothing here reads
//! the clock or does I/O, a replay of the same records gives the same decisions.

pub mod clock;
pub mod decide;
mod effects;
pub mod fallback;
pub mod fold;
pub mod ids;
pub mod input;
pub mod limits;
pub mod model;
pub mod outcome;
pub mod policy;
pub mod retention;
#[cfg(test)]
mod sim;
