//! Topics and partitions.
//!
//! * [`name`]: topic validation, the `tenant/room` partition key, the fixed
//!   hash onto virtual partitions and the partition → shard map.
//! * [`owned`]: state a topic's owner shard keeps: `seq`, `epoch`, and how
//!   many subscriptions each shard holds (the interest set).
//! * [`local`]: each shard's own index of which local connections subscribe
//!   to which topics.
//!
//! Everything here is plain data owned by one shard's thread; nothing is
//! shared and nothing does I/O.

pub mod dedupe;
pub mod local;
pub mod name;
pub mod owned;
pub mod replay;

pub use name::{BadTopic, PartitionMap};
