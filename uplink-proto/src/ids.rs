//! Every correlation id of the core: what names a connection, a request or an exchange, on either side.
//!
//! Each is a number its machine mints and never reuses, so an answer can only ever reach what it was for:
//! a frame read from a connection that died a moment ago names a connection that is no longer live, and a
//! decision for an ended request finds nothing.
//!
//! | id | minted by | names |
//! |---|---|---|
//! | [`ConnId`] | the sled machine | one connection attempt and the connection it becomes |
//! | [`PermKey`] | the sled machine | one permission request of an agent |
//! | [`McpCallId`] | the sled machine | one call to the local MCP endpoint (or one stream from it) |
//! | [`ConnHandle`] | the gateway's hub | one sled connection |
//! | [`PermId`] | a gateway session | one permission request on its connection |
//! | [`McpId`] | a gateway session | one MCP exchange on its connection |
//! | [`PublicPermId`] | the hub, from the two above | a pending permission, as people and the API name it |
//! | [`McpTicket`] | the hub, from the two above | an MCP exchange, as the adapter waits on it |

use core::fmt;
use core::str::FromStr;

use crate::pending::Key;

/// One connection attempt, and the connection it becomes. Never reused by a machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// One permission request, as the machine knows it. Never reused by a machine, so two requests that carry the
/// same wire id are still told apart.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PermKey(pub u64);

/// One call to the local MCP endpoint. Never reused by a machine.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct McpCallId(pub u64);

/// One sled connection, as the gateway's hub names it. Minted when the hub accepts it, never reused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnHandle(pub u64);

/// A permission request on one connection. Never reused by a session.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PermId(pub u64);

/// An MCP request sent on one connection. Never reused by a session.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct McpId(pub u64);

/// The public id of a pending permission: its connection and the session's number for it. Written and parsed
/// as `"{conn}-{perm}"` in decimal, with no sign and no leading zero, so each id has exactly one spelling.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicPermId {
    /// The connection the request arrived on.
    pub conn: ConnHandle,
    /// The session's id for it.
    pub perm: PermId,
}

impl fmt::Display for PublicPermId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.conn.0, self.perm.0)
    }
}

/// A string that is not a [`PublicPermId`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a permission id")]
pub struct BadPermId;

impl FromStr for PublicPermId {
    type Err = BadPermId;

    fn from_str(s: &str) -> Result<Self, BadPermId> {
        fn number(s: &str) -> Result<u64, BadPermId> {
            let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
            if !canonical {
                return Err(BadPermId);
            }
            s.parse().map_err(|_| BadPermId)
        }
        let (conn, perm) = s.split_once('-').ok_or(BadPermId)?;
        Ok(PublicPermId { conn: ConnHandle(number(conn)?), perm: PermId(number(perm)?) })
    }
}

/// Names one MCP exchange opened through the hub; any number of messages and then exactly one end (an
/// answer or a failure) with it follow.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct McpTicket {
    /// The connection it was sent on.
    pub conn: ConnHandle,
    /// The session's id for it.
    pub id: McpId,
}

/// Every id a pending table is keyed by: each is the `n`-th request's number.
macro_rules! keys {
    ($($t:ident),*) => {$(
        impl Key for $t {
            fn from_seq(n: u64) -> $t {
                $t(n)
            }
        }
    )*};
}

keys!(PermKey, McpCallId, PermId, McpId);
