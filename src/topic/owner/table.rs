//! The owner's topic table: a slab of topics with a name index, per-tenant
//! counts, and intrusive LRU lists of idle topics (no subscriber anywhere),
//! one shard-wide and one per tenant, so choosing and evicting a victim is
//! O(1) at any table size.
//!
//! Eviction rules (docs/ARCHITECTURE.md, "Bounded totals"):
//! * a topic with subscribers is never evicted;
//! * a tenant at its quota (`max_topics_per_tenant`) can only evict its own
//!   least recently used idle topic;
//! * at the shard bound (`max_topics_per_shard`) a tenant evicts its own LRU
//!   idle topic first; another tenant's idle topic is taken only if it holds
//!   no replay and no dedupe state (nothing a client could still rely on);
//!   otherwise the create is refused.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use crate::topic::owned::OwnedTopic;

/// "No slot" in an intrusive list.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

impl Link {
    const NONE: Link = Link { prev: NIL, next: NIL };
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl Default for List {
    fn default() -> Self {
        Self { head: NIL, tail: NIL }
    }
}

/// One slot of the table.
#[derive(Debug)]
pub struct Slot {
    /// The topic.
    pub topic: OwnedTopic,
    /// Bumped when the slot is reused, so sweep logs can tell.
    pub gen: u32,
    /// Index of the tenant entry.
    tenant: u32,
    /// Whether the topic is on the idle lists.
    idle: bool,
    /// Shard-wide idle list link.
    all: Link,
    /// The tenant's idle list link.
    own: Link,
}

#[derive(Debug)]
struct Tenant {
    name: Box<str>,
    topics: u32,
    idle: List,
}

/// Why a topic could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The shard holds `max_topics_per_shard` and no topic may be evicted.
    #[error("the owner shard holds its maximum number of topics")]
    TableFull,
    /// The tenant holds `max_topics_per_tenant` on this shard, none idle.
    #[error("the tenant holds its maximum number of topics on this shard")]
    TenantQuota,
}

/// Bounds of the table.
#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    /// Topics per shard.
    pub max_topics: usize,
    /// Topics per tenant per shard.
    pub max_per_tenant: usize,
}

/// What one create evicted, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Nothing.
    None,
    /// The creating tenant's own idle topic.
    Own,
    /// Another tenant's empty idle topic.
    Empty,
}

/// The topic table of one owner.
#[derive(Debug, Default)]
pub struct Table {
    slots: Slab<Slot>,
    index: HashMap<Arc<str>, u32>,
    tenants: Slab<Tenant>,
    tenant_index: HashMap<Box<str>, u32>,
    idle: List,
    next_gen: u32,
}

impl Table {
    /// The slot of `name`, if the topic exists.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// The slot at `idx`.
    pub fn get(&self, idx: u32) -> Option<&Slot> {
        self.slots.get(idx as usize)
    }

    /// The slot at `idx`, mutably.
    pub fn get_mut(&mut self, idx: u32) -> Option<&mut Slot> {
        self.slots.get_mut(idx as usize)
    }

    /// Topics held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no topic is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Topics of `tenant` held here.
    pub fn tenant_topics(&self, tenant: &str) -> usize {
        self.tenant_index.get(tenant).map_or(0, |&t| self.tenants[t as usize].topics as usize)
    }

    /// Iterates over every topic.
    pub fn iter(&self) -> impl Iterator<Item = &OwnedTopic> {
        self.slots.iter().map(|(_, s)| &s.topic)
    }

    /// Inserts a new topic (which must not exist) of `tenant`, evicting
    /// within the rules above. `make` builds it once a slot is sure.
    pub fn create(
        &mut self,
        name: &str,
        tenant: &str,
        lim: TableLimits,
        make: impl FnOnce(Arc<str>) -> OwnedTopic,
    ) -> Result<(u32, Evicted, Option<OwnedTopic>), CreateError> {
        let t = self.tenant_index.get(tenant).copied();
        let own_topics = t.map_or(0, |t| self.tenants[t as usize].topics as usize);
        let own_idle = t.map_or(NIL, |t| self.tenants[t as usize].idle.head);
        let mut evicted = (Evicted::None, None);
        if own_topics >= lim.max_per_tenant {
            if own_idle == NIL {
                return Err(CreateError::TenantQuota);
            }
            evicted = (Evicted::Own, self.remove(own_idle));
        } else if self.slots.len() >= lim.max_topics {
            if own_idle != NIL {
                evicted = (Evicted::Own, self.remove(own_idle));
            } else {
                let head = self.idle.head;
                let empty = self.slots.get(head as usize).is_some_and(|s| s.topic.holds_nothing());
                if !empty {
                    return Err(CreateError::TableFull);
                }
                evicted = (Evicted::Empty, self.remove(head));
            }
        }
        // The tenant entry may have gone with the eviction.
        let t = match self.tenant_index.get(tenant) {
            Some(&t) => t,
            None => {
                let t = self.tenants.insert(Tenant { name: tenant.into(), topics: 0, idle: List::default() }) as u32;
                self.tenant_index.insert(tenant.into(), t);
                t
            }
        };
        self.tenants[t as usize].topics += 1;
        let name: Arc<str> = Arc::from(name);
        self.next_gen = self.next_gen.wrapping_add(1);
        let slot = Slot {
            topic: make(name.clone()),
            gen: self.next_gen,
            tenant: t,
            idle: false,
            all: Link::NONE,
            own: Link::NONE,
        };
        let idx = self.slots.insert(slot) as u32;
        self.index.insert(name, idx);
        // A new topic has no subscriber yet: it is idle until one comes.
        self.set_idle(idx, true);
        Ok((idx, evicted.0, evicted.1))
    }

    /// Removes the topic at `idx`.
    pub fn remove(&mut self, idx: u32) -> Option<OwnedTopic> {
        self.set_idle(idx, false);
        let slot = self.slots.try_remove(idx as usize)?;
        self.index.remove(&slot.topic.name);
        let t = slot.tenant as usize;
        if let Some(tenant) = self.tenants.get_mut(t) {
            tenant.topics -= 1;
            if tenant.topics == 0 {
                let gone = self.tenants.remove(t);
                self.tenant_index.remove(&gone.name);
            }
        }
        Some(slot.topic)
    }

    /// Puts the topic on, or takes it off, the idle lists (at the most
    /// recently used end).
    pub fn set_idle(&mut self, idx: u32, idle: bool) {
        let Some(slot) = self.slots.get(idx as usize) else { return };
        if slot.idle == idle {
            return;
        }
        let t = slot.tenant;
        if idle {
            let tail = self.idle.tail;
            link_tail(&mut self.slots, &mut self.idle, idx, tail, |s| &mut s.all);
            let tl = &mut self.tenants[t as usize].idle;
            let tail = tl.tail;
            link_tail(&mut self.slots, tl, idx, tail, |s| &mut s.own);
        } else {
            unlink(&mut self.slots, &mut self.idle, idx, |s| &mut s.all);
            unlink(&mut self.slots, &mut self.tenants[t as usize].idle, idx, |s| &mut s.own);
        }
        self.slots[idx as usize].idle = idle;
    }

    /// Marks an idle topic as just used (moves it to the MRU end).
    pub fn touch(&mut self, idx: u32) {
        if self.slots.get(idx as usize).is_some_and(|s| s.idle) {
            self.set_idle(idx, false);
            self.set_idle(idx, true);
        }
    }
}

fn link_tail(slots: &mut Slab<Slot>, list: &mut List, idx: u32, tail: u32, link: impl Fn(&mut Slot) -> &mut Link) {
    *link(&mut slots[idx as usize]) = Link { prev: tail, next: NIL };
    if tail == NIL {
        list.head = idx;
    } else {
        link(&mut slots[tail as usize]).next = idx;
    }
    list.tail = idx;
}

fn unlink(slots: &mut Slab<Slot>, list: &mut List, idx: u32, link: impl Fn(&mut Slot) -> &mut Link) {
    let Link { prev, next } = *link(&mut slots[idx as usize]);
    if prev == NIL {
        list.head = next;
    } else {
        link(&mut slots[prev as usize]).next = next;
    }
    if next == NIL {
        list.tail = prev;
    } else {
        link(&mut slots[next as usize]).prev = prev;
    }
    *link(&mut slots[idx as usize]) = Link::NONE;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::owned::EpochSource;

    fn lim(max_topics: usize, max_per_tenant: usize) -> TableLimits {
        TableLimits { max_topics, max_per_tenant }
    }

    fn add(t: &mut Table, name: &str, l: TableLimits) -> Result<(u32, Evicted), CreateError> {
        let mut e = EpochSource::new(0);
        let tenant = name.split('/').next().unwrap().to_string();
        t.create(name, &tenant, l, |n| OwnedTopic::new(n, e.next_epoch(), 2)).map(|(i, ev, _)| (i, ev))
    }

    #[test]
    fn lru_idle_victim_and_busy_topics_kept() {
        let l = lim(3, 10);
        let mut t = Table::default();
        let (a, _) = add(&mut t, "x/a", l).unwrap();
        let (b, _) = add(&mut t, "x/b", l).unwrap();
        let (c, _) = add(&mut t, "x/c", l).unwrap();
        t.set_idle(a, false); // a gets a subscriber
        t.touch(b); // b used more recently than c
        let (_, ev) = add(&mut t, "x/d", l).unwrap();
        assert_eq!(ev, Evicted::Own);
        assert!(t.find("x/c").is_none(), "c was the LRU idle topic");
        assert!(t.find("x/a").is_some() && t.find("x/b").is_some());
        let _ = c;
    }

    #[test]
    fn tenant_quota_evicts_only_its_own() {
        let l = lim(100, 2);
        let mut t = Table::default();
        add(&mut t, "x/1", l).unwrap();
        let (y, _) = add(&mut t, "y/1", l).unwrap();
        add(&mut t, "y/2", l).unwrap();
        let (_, ev) = add(&mut t, "y/3", l).unwrap();
        assert_eq!(ev, Evicted::Own);
        assert!(t.find("y/1").is_none(), "y's own LRU went");
        assert!(t.find("x/1").is_some(), "x untouched");
        for n in ["y/2", "y/3"] {
            let i = t.find(n).unwrap();
            t.set_idle(i, false);
        }
        assert_eq!(add(&mut t, "y/4", l).unwrap_err(), CreateError::TenantQuota);
        let _ = y;
        assert_eq!((t.tenant_topics("y"), t.tenant_topics("x")), (2, 1));
    }

    #[test]
    fn full_table_never_takes_another_tenants_state() {
        let l = lim(2, 10);
        let mut t = Table::default();
        let (x, _) = add(&mut t, "x/1", l).unwrap();
        t.get_mut(x).unwrap().topic.seq = 5;
        t.get_mut(x).unwrap().topic.dedupe.insert("m", 5, std::time::Instant::now());
        t.touch(x);
        add(&mut t, "x/2", l).unwrap();
        t.get_mut(t.find("x/2").unwrap()).unwrap().topic.dedupe.insert("n", 1, std::time::Instant::now());
        assert_eq!(add(&mut t, "y/1", l).unwrap_err(), CreateError::TableFull);
        // Once x/1 holds nothing, y may take its slot.
        t.get_mut(x).unwrap().topic.dedupe = Default::default();
        let (_, ev) = add(&mut t, "y/1", l).unwrap();
        assert_eq!(ev, Evicted::Empty);
        assert!(t.find("x/1").is_none());
    }

    #[test]
    fn lists_stay_consistent_under_churn() {
        let l = lim(1000, 1000);
        let mut t = Table::default();
        let ids: Vec<u32> = (0..50).map(|i| add(&mut t, &format!("t{}/r{i}", i % 3), l).unwrap().0).collect();
        for (k, &i) in ids.iter().enumerate() {
            match k % 4 {
                0 => t.set_idle(i, false),
                1 => t.touch(i),
                2 => {
                    t.remove(i);
                }
                _ => {}
            }
        }
        // Walk the shard-wide idle list: every slot on it is idle, no cycle.
        let mut n = 0;
        let mut cur = t.idle.head;
        while cur != NIL {
            assert!(t.slots[cur as usize].idle);
            cur = t.slots[cur as usize].all.next;
            n += 1;
            assert!(n <= t.len());
        }
        assert_eq!(n, t.slots.iter().filter(|(_, s)| s.idle).count());
    }
}
