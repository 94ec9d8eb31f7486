//! The control layer: the only code that changes the live router after start-up
//! (guardrail rollbacks here; reloads and health checks beside it). Features below
//! it decide; this layer acts on their decisions.

pub mod guardrails;
