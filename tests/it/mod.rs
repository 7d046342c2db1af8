pub mod api;
pub mod coalescing;
pub mod faults;
pub mod mirror;
pub mod pull;
