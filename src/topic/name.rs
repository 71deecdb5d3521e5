//! Topic names, partition keys and the partition map.
//!
//! A topic is `tenant/room[/rest]`: 2 to 8 segments of 1–64 bytes from
//! `[A-Za-z0-9_.:-]`, at most 255 bytes in all. The partition key is the
//! first two segments. It is hashed with 64-bit FNV-1a (fixed and documented,
//! so clients and tools can compute ownership too) onto `partitions` virtual
//! partitions, and partition `p` belongs to shard `p % shards`.

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;
/// Most segments in a topic name.
pub const MAX_SEGMENTS: usize = 8;
/// Longest segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 64;

/// Why a topic name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadTopic {
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic longer than 255 bytes")]
    TooLong,
    /// Fewer than two segments: no `tenant/room`.
    #[error("topic must be tenant/room[/...]")]
    TooFewSegments,
    /// More than [`MAX_SEGMENTS`].
    #[error("topic has more than 8 segments")]
    TooManySegments,
    /// An empty segment or one longer than [`MAX_SEGMENT_LEN`].
    #[error("topic segments must be 1-64 bytes")]
    SegmentLength,
    /// A byte outside `[A-Za-z0-9_.:-]`.
    #[error("topic segments may only hold A-Z a-z 0-9 _ . : -")]
    BadChar,
}

/// Whether `seg` is a valid topic segment (1–64 bytes of `[A-Za-z0-9_.:-]`).
pub fn valid_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg.len() <= MAX_SEGMENT_LEN
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Checks a topic name against the naming rules.
pub fn validate(topic: &str) -> Result<(), BadTopic> {
    if topic.len() > MAX_TOPIC_LEN {
        return Err(BadTopic::TooLong);
    }
    let mut segments = 0;
    for seg in topic.split('/') {
        segments += 1;
        if segments > MAX_SEGMENTS {
            return Err(BadTopic::TooManySegments);
        }
        if seg.is_empty() || seg.len() > MAX_SEGMENT_LEN {
            return Err(BadTopic::SegmentLength);
        }
        let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
        if !seg.as_bytes().iter().all(ok) {
            return Err(BadTopic::BadChar);
        }
    }
    if segments < 2 {
        return Err(BadTopic::TooFewSegments);
    }
    Ok(())
}

/// The partition key of a valid topic: its first two segments.
pub fn partition_key(topic: &str) -> &str {
    let mut slashes = topic.match_indices('/').map(|(i, _)| i);
    let _tenant_end = slashes.next();
    match slashes.next() {
        Some(room_end) => &topic[..room_end],
        None => topic,
    }
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Who owns a partition: the one routing abstraction the connection plane
/// sends topic commands through. Today every owner is a local shard; in
/// cluster mode an entry becomes the cluster writer of the partition (a
/// bridge participant on the mesh), and callers do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnerRef {
    /// Shard `k` of this process owns it.
    Shard(usize),
}

/// Maps topics to virtual partitions and partitions to owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMap {
    /// Number of virtual partitions (fixed for the life of a deployment).
    pub partitions: u32,
    /// Number of shards.
    pub shards: usize,
}

impl PartitionMap {
    /// The virtual partition of a valid topic.
    pub fn partition(&self, topic: &str) -> u32 {
        (fnv1a64(partition_key(topic).as_bytes()) % u64::from(self.partitions)) as u32
    }

    /// The owner shard of a valid topic.
    pub fn owner(&self, topic: &str) -> usize {
        self.partition(topic) as usize % self.shards
    }

    /// The owner of a valid topic's partition.
    pub fn route(&self, topic: &str) -> OwnerRef {
        OwnerRef::Shard(self.owner(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for t in ["acme/room-1", "a/b", "t_1/r.2/x:y/z-w", "a/b/c/d/e/f/g/h"] {
            assert_eq!(validate(t), Ok(()), "{t}");
        }
        let long_seg = "x".repeat(64);
        assert_eq!(validate(&format!("{long_seg}/{long_seg}/{long_seg}")), Ok(()));
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(validate("acme"), Err(BadTopic::TooFewSegments));
        assert_eq!(validate(""), Err(BadTopic::SegmentLength));
        assert_eq!(validate("acme//x"), Err(BadTopic::SegmentLength));
        assert_eq!(validate("acme/"), Err(BadTopic::SegmentLength));
        assert_eq!(validate("/acme/x"), Err(BadTopic::SegmentLength));
        assert_eq!(validate("a/b/c/d/e/f/g/h/i"), Err(BadTopic::TooManySegments));
        assert_eq!(validate("acme/room 1"), Err(BadTopic::BadChar));
        assert_eq!(validate("acme/r\u{e9}"), Err(BadTopic::BadChar));
        assert_eq!(validate("acme/\"x"), Err(BadTopic::BadChar));
        assert_eq!(validate(&format!("a/{}", "x".repeat(65))), Err(BadTopic::SegmentLength));
        let long = format!("{0}/{0}/{0}/{0}", "x".repeat(64));
        assert_eq!(validate(&long), Err(BadTopic::TooLong));
    }

    #[test]
    fn partition_key_is_tenant_room() {
        assert_eq!(partition_key("acme/room-1"), "acme/room-1");
        assert_eq!(partition_key("acme/room-1/agent/7"), "acme/room-1");
        let map = PartitionMap { partitions: 1024, shards: 3 };
        assert_eq!(map.owner("acme/room-1/a"), map.owner("acme/room-1/b/c"));
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn partitions_spread_over_shards() {
        let map = PartitionMap { partitions: 1024, shards: 4 };
        let mut per_shard = [0usize; 4];
        for i in 0..4000 {
            per_shard[map.owner(&format!("tenant{}/room{}", i % 50, i))] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 700), "{per_shard:?}");
    }
}
