pub mod api;
pub mod cli;
pub mod coalescing;
pub mod eviction;
pub mod faults;
pub mod freshness;
pub mod mirror;
pub mod pull;
