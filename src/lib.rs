//! shardcast: a thread-per-core WebSocket fanout engine.
//!
//! Each pinned core runs a shard that owns a set of connections and a set of
//! topic partitions; shards talk over lock-free SPSC rings. See
//! `docs/ARCHITECTURE.md` for the design and `docs/PROTOCOL.md` for the wire
//! protocol.
//!
//! Layout: [`proto`] (sans-io WebSocket and messages), [`topic`] (names,
//! partitions, seq/epoch, interest), [`mesh`] (rings, doorbells, the
//! cross-shard message), [`conn`] (the connection plane: shard state and
//! the edge), [`shard`] (executors, socket tasks, the control plane's
//! ends), [`admin`], [`server`] (start/stop, supervision), [`config`].
//! Each folder uses only the ones before it (checked by `tests/layering.rs`).

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod host;
pub mod mesh;
pub mod proto;
pub mod server;
pub mod shard;
pub mod topic;

pub use config::Config;
pub use server::{start, ServerHandle, StartError};
