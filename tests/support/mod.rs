//! Test support: an in-process fake upstream registry with misbehaviour switches.

pub mod fake_registry;
pub mod images;

#[cfg(test)]
mod selftest;
