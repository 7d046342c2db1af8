//! Test support: an in-process fake upstream registry with misbehaviour switches.

pub mod fake_registry;
pub mod images;
pub mod s3;
pub mod schema1;

#[cfg(test)]
mod selftest;
