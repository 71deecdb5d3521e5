//! The connection plane of one shard: [`core::ShardCore`] (its connections,
//! their local subscriber index, its ends of the mesh, its counters) and the
//! edge logic around it — bytes in ([`input`], [`http`]), publish admission
//! ([`publish`]), owner commands out and owner outcomes back ([`routing`],
//! [`deliver`]), outbound lanes ([`outbound`]), liveness and drain.
//!
//! Plain data and logic run by the shard's own thread: no glommio, no
//! sockets, no clock reads except at the entry points (`*_at` variants take
//! the time). The glommio tasks that call in live in `shard/`; the owner
//! state machine it drives lives in `topic/owner`.

pub mod centrifugo;
pub mod core;
pub mod deliver;
pub mod drain;
pub mod durable;
pub mod groups;
pub mod http;
pub mod input;
pub mod liveness;
pub mod logs;
pub mod outbound;
pub mod publish;
pub mod rate;
pub mod receipts;
pub mod requests;
pub mod routing;
pub mod state;
pub mod stats;

pub use state::{Conn, Phase};
