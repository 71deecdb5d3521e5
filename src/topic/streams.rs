//! Appendable token streams of one topic (PROTOCOL-EXTENSIONS §4), kept by
//! the topic's owner: each open or recently closed stream's whole text, so
//! a late joiner gets one rollup instead of a gap.
//!
//! Bounds (config `[streams]`): bytes per stream (`max_stream_bytes`),
//! streams per topic (`max_per_topic`: a new stream takes the place of the
//! oldest closed one, else it is refused), stream bytes per shard
//! (`shard_budget_bytes`: past it a new append is refused), how long a
//! closed stream is kept (`keep_closed_ms`) and how long an open one may go
//! without an append before the server ends it (`idle_timeout_ms`,
//! `"reason":"abandoned"`).

use std::time::{Duration, Instant};

/// The bounds of streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Text bytes one stream may hold.
    pub max_stream_bytes: usize,
    /// Streams (open or kept closed) per topic.
    pub max_per_topic: usize,
    /// Stream text bytes per shard.
    pub shard_budget_bytes: usize,
    /// How long a closed stream's text is kept.
    pub keep_closed: Duration,
    /// An open stream without an append this long is ended by the server.
    pub idle_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_stream_bytes: 256 << 10,
            max_per_topic: 16,
            shard_budget_bytes: 64 << 20,
            keep_closed: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// One stream's state.
#[derive(Debug)]
pub struct Stream {
    /// Its name (the `stream` field).
    pub name: Box<str>,
    /// All text appended so far.
    pub text: String,
    /// Seq of the last append.
    pub upto: u64,
    /// Closed (`end: true`, or ended by the server).
    pub ended: bool,
    /// When it was last appended to (or closed).
    pub last: Instant,
    /// Shard-unique id (sweep log key).
    pub uid: u64,
}

/// Why an append was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefused {
    /// The stream holds `max_stream_bytes`.
    StreamFull,
    /// The topic holds `max_per_topic` open streams.
    TooManyStreams,
    /// The shard holds `shard_budget_bytes` of stream text.
    ShardBudget,
    /// The stream was closed; its name is not reused while it is kept.
    Ended,
}

impl StreamRefused {
    /// The counter label.
    pub fn label(self) -> &'static str {
        match self {
            Self::StreamFull => "stream_full",
            Self::TooManyStreams => "too_many_streams",
            Self::ShardBudget => "stream_budget",
            Self::Ended => "stream_ended",
        }
    }

    /// The explanation sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            Self::StreamFull => "the stream holds streams.max_stream_bytes of text",
            Self::TooManyStreams => "the topic holds streams.max_per_topic open streams",
            Self::ShardBudget => "the shard holds streams.shard_budget_bytes of stream text; retry later",
            Self::Ended => "the stream has ended",
        }
    }
}

/// The streams of one topic, in creation order (a handful: a Vec).
#[derive(Debug, Default)]
pub struct Streams {
    list: Vec<Stream>,
    bytes: usize,
}

/// What an admitted append will do (computed before the seq is assigned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Appends to the open stream at this index.
    Append(usize),
    /// Opens a new stream, first dropping the closed one at this index.
    Open(Option<usize>),
}

impl Streams {
    /// Text bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no stream is held.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The streams, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.list.iter()
    }

    /// Whether `add` more bytes may go to stream `name` (`shard_bytes`: the
    /// shard's stream bytes now).
    pub fn admit(
        &self,
        name: &str,
        add: usize,
        shard_bytes: usize,
        lim: &StreamLimits,
    ) -> Result<Admit, StreamRefused> {
        if shard_bytes + add > lim.shard_budget_bytes {
            return Err(StreamRefused::ShardBudget);
        }
        match self.list.iter().position(|s| &*s.name == name) {
            Some(i) if self.list[i].ended => Err(StreamRefused::Ended),
            Some(i) if self.list[i].text.len() + add > lim.max_stream_bytes => Err(StreamRefused::StreamFull),
            Some(i) => Ok(Admit::Append(i)),
            None if add > lim.max_stream_bytes => Err(StreamRefused::StreamFull),
            None if self.list.len() < lim.max_per_topic => Ok(Admit::Open(None)),
            None => match self.list.iter().position(|s| s.ended) {
                Some(i) => Ok(Admit::Open(Some(i))),
                None => Err(StreamRefused::TooManyStreams),
            },
        }
    }

    /// Applies an admitted append; returns (bytes added, bytes freed, the
    /// stream's uid, whether it is new).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        how: Admit,
        name: &str,
        text: &str,
        seq: u64,
        end: bool,
        now: Instant,
        uid: u64,
    ) -> (usize, usize, u64, bool) {
        let mut freed = 0;
        let (i, new) = match how {
            Admit::Append(i) => (i, false),
            Admit::Open(drop) => {
                if let Some(d) = drop {
                    freed = self.list.remove(d).text.len();
                }
                self.list.push(Stream {
                    name: name.into(),
                    text: String::new(),
                    upto: 0,
                    ended: false,
                    last: now,
                    uid,
                });
                (self.list.len() - 1, true)
            }
        };
        let s = &mut self.list[i];
        s.text.push_str(text);
        s.upto = seq;
        s.ended = end;
        s.last = now;
        self.bytes = self.bytes + text.len() - freed;
        (text.len(), freed, s.uid, new)
    }

    /// The stream with `uid`, if still held.
    pub fn by_uid(&self, uid: u64) -> Option<&Stream> {
        self.list.iter().find(|s| s.uid == uid)
    }

    /// Drops the stream `uid`; its bytes.
    pub fn remove(&mut self, uid: u64) -> usize {
        match self.list.iter().position(|s| s.uid == uid) {
            Some(i) => {
                let n = self.list.remove(i).text.len();
                self.bytes -= n;
                n
            }
            None => 0,
        }
    }
}

/// The JSON string `data` of an append, unescaped (the edge checked that
/// it is a JSON string).
pub fn text_of(data: &str) -> Option<String> {
    serde_json::from_str::<String>(data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_refuse_or_make_room() {
        let lim = StreamLimits { max_stream_bytes: 10, max_per_topic: 2, ..Default::default() };
        let now = Instant::now();
        let mut s = Streams::default();
        let a = s.admit("a", 4, 0, &lim).unwrap();
        assert_eq!(a, Admit::Open(None));
        s.apply(a, "a", "Hell", 1, false, now, 1);
        assert_eq!(s.admit("a", 7, 0, &lim), Err(StreamRefused::StreamFull));
        let a = s.admit("a", 1, 0, &lim).unwrap();
        s.apply(a, "a", "o", 2, true, now, 1);
        assert_eq!(s.admit("a", 1, 0, &lim), Err(StreamRefused::Ended));
        let b = s.admit("b", 1, 0, &lim).unwrap();
        s.apply(b, "b", "x", 3, false, now, 2);
        // Two held; "c" takes the place of the closed "a".
        assert_eq!(s.admit("c", 1, 0, &lim), Ok(Admit::Open(Some(0))));
        let c = s.admit("c", 1, 0, &lim).unwrap();
        let (_, freed, _, new) = s.apply(c, "c", "y", 4, false, now, 3);
        assert!(new);
        assert_eq!(freed, 5);
        assert_eq!(s.bytes(), 2);
        // Both open now: a third is refused.
        assert_eq!(s.admit("d", 1, 0, &lim), Err(StreamRefused::TooManyStreams));
        assert_eq!(s.admit("b", 1, lim.shard_budget_bytes, &lim), Err(StreamRefused::ShardBudget));
        assert_eq!(s.remove(2), 1);
        assert_eq!(s.bytes(), 1);
        assert_eq!(text_of(r#""a\"\u00e9""#).as_deref(), Some("a\"é"));
        assert_eq!(text_of("1"), None);
    }
}
