//! End-to-end tests of the `custos` binary: each runs the real executable in a temporary folder.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

mod api_doc;
mod architecture;
mod browser;
mod contract;
mod exports;
mod hostile;
mod http;
mod http_replay;
mod invalid_steps;
mod logs;
mod pages;
mod policy_check;
mod replicas;
mod retention;
mod scenarios;
mod storage;
mod support;
