//! One module per command family.

pub mod announce;
pub mod demo;
pub mod inspect;
