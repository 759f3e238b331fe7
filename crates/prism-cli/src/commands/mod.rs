//! One module per group of subcommands.

pub mod admin;
pub mod audit;
pub mod demo;
pub mod health;
pub mod inspect;
pub mod serve;
pub mod sidecar;
pub mod witness;
