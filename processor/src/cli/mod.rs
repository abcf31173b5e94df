//! The operator commands beside `processor run`: [`replay`] moves the stopped group
//! back so part of the raw log is decided again; [`dlq`] lists, shows and re-drives
//! dead letters; [`topics`] creates and checks every topic. All talk to the broker
//! only (never to a running processor's state).

pub mod dlq;
pub mod replay;
pub mod topics;
