//! The load generator's parts (the `loadgen` binary is a thin CLI over them).
pub mod baseline;
pub mod flood;
pub mod sender;
pub mod verify;
pub mod wire;
pub mod workload;
