pub mod api;
pub mod cli;
pub mod coalescing;
pub mod faults;
pub mod mirror;
pub mod pull;
