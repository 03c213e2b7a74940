//! Tokio adapter for [`uplink_proto`]: performs the WebSocket and HTTP I/O that the sans-IO core asks for.
//!
//! Not built yet: the adapter, the embedding API and the `uplink` program are tracked as their own issue.
//! Until then, drive [`uplink_proto::Sled`] directly (see its crate documentation for the drive loop).

pub use uplink_proto;
