//! hookstream's broker-backed tests, as one binary: librdkafka is linked once and the
//! tests share one broker ([`hookstream_tests::broker::Broker::shared`]; tests that stop
//! or kill a broker start their own). Each module is one area of the contract and its
//! doc says which; run one with `cargo test --workspace --test integration holes::`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod broker_roundtrip;
mod changelog;
mod chaos;
mod cluster;
mod corrupt_store;
mod crash;
mod group;
mod holes;
mod hostile;
mod ingest;
mod ingest_corpus;
mod ingest_limits;
mod pipeline;
mod policy;
mod prometheus;
mod recovery;
mod replay;
mod topics;
mod traces;
mod zombie;
