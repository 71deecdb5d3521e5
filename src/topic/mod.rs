//! Topics and partitions.
//!
//! * [`name`]: topic validation, the `tenant/room` partition key, the fixed
//!   hash onto virtual partitions and the partition → owner routing table.
//! * [`owner`]: the owner state machine of a shard's partitions (seq, epoch,
//!   replay, dedupe, interest, eviction, sweep), pure: time comes in,
//!   outcomes go out.
//! * [`owned`], [`replay`], [`dedupe`], [`streams`]: one topic's state inside the owner.
//! * [`publication`]: the protocol-neutral publication the mesh carries.
//! * [`local`]: each shard's own index of which local connections subscribe
//!   to which topics.
//! * [`wheel`]: the hashed timer wheel for deadlines and expiries.
//!
//! Everything here is plain data owned by one shard's thread; nothing is
//! shared and nothing does I/O.

pub mod dedupe;
pub mod local;
pub mod name;
pub mod owned;
pub mod owner;
pub mod presence;
pub mod publication;
pub mod replay;
pub mod streams;
pub mod wheel;

pub use name::{BadTopic, OwnerRef, PartitionMap};
