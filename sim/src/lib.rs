//! The deterministic multi-datacenter simulator for vaultfleet (issue: "Deterministic
//! multi-datacenter simulator"). It will drive the same [`vaultfleet::Replica`] code
//! that ships, in virtual time, from one seeded RNG.
//!
//! This crate is a workspace member from the start so that the core's API is
//! shaped for a second driver; its content lands with the simulator issue.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
