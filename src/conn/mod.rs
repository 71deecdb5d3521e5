//! The connection plane: accept, the HTTP upgrade, the read loop, and the
//! outbound lanes a writer drains with as few `send`s as it can.
//!
//! [`state`], [`outbound`] and [`input`] are plain data and logic run by the
//! shard's thread; only [`io`] touches glommio.

pub mod deliver;
pub mod http;
pub mod input;
pub mod io;
pub mod outbound;
pub mod rate;
pub mod state;

pub use state::{Conn, Phase};
