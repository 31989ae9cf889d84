//! End-to-end tests of the `custos` binary: each runs the real executable in a temporary folder.

mod architecture;
mod invalid_steps;
mod policy_check;
mod scenarios;
mod support;
