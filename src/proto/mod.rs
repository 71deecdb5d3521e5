//! Sans-io protocol core: the HTTP upgrade, WebSocket framing and the JSON
//! messages of `docs/PROTOCOL.md`.
//!
//! Nothing here does I/O, reads a clock or knows about glommio: bytes go in,
//! decoded events and encoded bytes come out. Every function is tested on byte
//! fixtures at the bottom of its file. Input from the network never panics
//! here; it yields an error that names the close code or error code to send.

pub mod centrifugo;
pub mod frame;
pub mod handshake;
pub mod json_check;
pub mod message;

pub use frame::{CloseCode, Decoded, FrameError, MessageAssembler};
pub use handshake::{HandshakeOutcome, HttpRequest};
pub use message::{Command, ErrorCode, Prio};
