//! Delivery receipts (PROTOCOL-EXTENSIONS §6): `pub` with `receipt: true`
//! gets `{"op":"receipt","id","topic","seq","delivered","dropped"}` once the
//! publication was handed to the kernel for every subscriber of that moment
//! (or dropped for slowness).
//!
//! * The owner sends each interested shard the publication with a
//!   [`ReceiptTo`] naming the publisher and how many parts make the whole.
//! * Each such shard queues one [`Delivery`](super::outbound::Delivery)
//!   carrying a ticket; its subscribers' writers count the frame when they
//!   copy it into a send; when the last reference goes (written or dropped
//!   everywhere), the ticket's part lands in the shard's sink, which the
//!   mesh task drains into `ReceiptPart` messages.
//! * The publisher's shard adds the parts up and sends the receipt once all
//!   parts are in and the ack went out (a receipt never overtakes its ack).
//!
//! No cost when not asked for: a delivery without a ticket is one `None`.
//! Bound: `limits.max_receipts_per_connection` receipts outstanding per
//! connection (past it, `pub` with `receipt` gets `overloaded`).

use std::collections::HashMap;
use std::sync::Arc;

use super::core::ShardCore;
use super::outbound::ReceiptSink;
use crate::mesh::msg::ReceiptTo;
use crate::mesh::{ConnRef, MeshMsg};
use crate::proto::message;

/// One receipt being assembled on the publisher's shard.
#[derive(Debug, Default)]
struct Assembling {
    id: Option<u64>,
    parts: u32,
    of: u32,
    delivered: u64,
    dropped: u64,
    acked: bool,
}

/// A shard's receipts: the sink of finished parts, and the receipts of its
/// own publishers being assembled.
#[derive(Debug, Default)]
pub struct Receipts {
    /// Parts finished on this shard, not sent yet.
    pub sink: ReceiptSink,
    assembling: HashMap<(ConnRef, u64, Arc<str>), Assembling>,
}

impl Receipts {
    /// Receipts being assembled.
    pub fn pending(&self) -> usize {
        self.assembling.len()
    }
}

impl ShardCore {
    /// Sends the parts finished since the last call to their publishers'
    /// shards.
    pub fn flush_receipts(&mut self) {
        if self.receipts.sink.borrow().is_empty() {
            return;
        }
        let parts = std::mem::take(&mut *self.receipts.sink.borrow_mut());
        for (to, topic, seq, delivered, dropped) in parts {
            self.send_to(to.shard, MeshMsg::ReceiptPart { to, topic, seq, delivered, dropped });
        }
    }

    /// The publisher's shard: one shard's part of a receipt.
    pub(crate) fn on_receipt_part(&mut self, to: ReceiptTo, topic: Arc<str>, seq: u64, delivered: u32, dropped: u32) {
        let key = (to.conn, seq, topic);
        if self.conn_mut(to.conn).is_none() {
            self.receipts.assembling.remove(&key);
            return;
        }
        let a = self.receipts.assembling.entry(key.clone()).or_default();
        a.parts += 1;
        a.of = to.of;
        a.delivered += u64::from(delivered);
        a.dropped += u64::from(dropped);
        self.receipt_ready(key);
    }

    /// The publisher's shard: the ack of a publish with `receipt` went out.
    pub(crate) fn receipt_acked(&mut self, conn: ConnRef, id: Option<u64>, topic: &Arc<str>, seq: u64) {
        let key = (conn, seq, topic.clone());
        let a = self.receipts.assembling.entry(key.clone()).or_default();
        a.acked = true;
        a.id = id;
        self.receipt_ready(key);
    }

    /// A publish with `receipt` was refused or was a duplicate: no receipt.
    pub(crate) fn receipt_void(&mut self, conn: ConnRef) {
        if let Some(c) = self.conn_mut(conn) {
            c.receipts = c.receipts.saturating_sub(1);
        }
    }

    fn receipt_ready(&mut self, key: (ConnRef, u64, Arc<str>)) {
        let Some(a) = self.receipts.assembling.get(&key) else { return };
        if !a.acked || a.parts == 0 || a.parts < a.of {
            return;
        }
        let Some(a) = self.receipts.assembling.remove(&key) else { return };
        let (conn, seq, topic) = key;
        self.counters.receipts_sent += 1;
        let Some(c) = self.conn_mut(conn) else { return };
        c.receipts = c.receipts.saturating_sub(1);
        let idx = conn.idx as usize;
        self.reply(idx, |o| message::receipt(o, a.id, &topic, seq, a.delivered, a.dropped));
    }

    /// A connection goes: receipts still assembling for it are forgotten as
    /// their parts arrive (nothing is sent to a closed connection).
    pub(crate) fn receipts_on_close(&mut self, conn: ConnRef) {
        if self.receipts.assembling.is_empty() {
            return;
        }
        self.receipts.assembling.retain(|(c, _, _), _| *c != conn);
    }
}
