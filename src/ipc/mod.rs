//! Inter-process transport: framing over a Unix socket pair, with postcard as
//! the value codec.
//!
//! The process servlet is this module's only client. The wire format is in
//! [`frame`] (its reading from a socket in [`reader`]); it is public so that it can be fuzzed (`fuzz/`) and inspected,
//! not because users need it.

pub mod codec;
pub mod frame;
pub mod reader;
pub mod shm;

pub use codec::Codec;
