//! Load generation and comparison tooling for abgate (see `benches/README.md`).

pub mod loadgen;
