//! The cross-shard mesh: one rtrb SPSC ring per ordered pair of shards, a
//! doorbell per shard, and the one message enum that crosses shards.
//!
//! A shard's mesh task drains its N−1 inbound rings in batches. Producers
//! ring the consumer's doorbell only when the consumer has parked (found all
//! rings empty and is about to sleep), so a busy engine makes no syscall per
//! message and an idle one sleeps in io_uring at ~0% CPU.

pub mod doorbell;
pub mod msg;
pub mod ring;

pub use doorbell::Doorbell;
pub use msg::{ConnRef, MeshMsg, PubReply, PublishReq, ReplyKind, Requester, SharedPub};
pub use ring::{build, MeshEnds, Outbox};
