//! # uplink-proto
//!
//! The sans-IO core of the sled ↔ gateway uplink protocol. PLACEHOLDER_DOCS
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

mod backoff;
pub mod jsonrpc;
pub mod sled;
pub mod time;
pub mod wire;

pub use sled::{
    Cause, ConfigError, ConnId, ConnectError, Decided, Event, Ignored, LinkState, LossReason,
    McpCall, McpCallId, McpReply, Output, PermKey, Received, Sled, SledConfig, Stats,
};
pub use time::Instant;
pub use wire::{Decision, GatewayFrame, RawValue, SledFrame};
