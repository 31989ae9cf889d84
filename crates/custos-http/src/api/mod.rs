//! The API's handlers (docs/API.md §2), by resource. Each authenticates and checks its caller's
//! role, reads the request into core types, and asks an action, the store or the gate index;
//! none decides anything itself.

pub mod accounts;
pub mod conversations;
pub mod events;
pub mod exports;
pub mod operations;
pub mod reports;
pub mod retention;
