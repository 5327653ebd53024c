//! [`Bytes`]: the byte-payload type for worker inputs and outputs.
//!
//! A `Vec<u8>` field serialises, with serde, as a *sequence of `u8`*: every
//! byte goes through the codec one element at a time (postcard encodes and
//! decodes 64 KiB that way about 1.4 times slower than as one block, measured
//! end to end through a worker process, benchmark `S13_bytes_64k`). [`Bytes`]
//! serialises as one block of bytes (like `serde_bytes::ByteBuf`), clones
//! without copying (it is backed by a reference-counted [`bytes::Bytes`]),
//! and converts to and from `Vec<u8>`, `&'static [u8]`, `String` and
//! `bytes::Bytes`. It dereferences to `[u8]`.
//!
//! A large `Bytes` in a worker's input that crossed through shared memory is
//! not copied: the worker gets a view of its slot, which keeps the slot from
//! reuse while any clone of it lives (`ipc/shm/view.rs` says how the
//! deserializer finds the slot, and what a kept view costs). The same holds
//! for a large `Bytes` in a process worker's result: the caller gets a view
//! of the slot the result came in (while results kept so hold at most half
//! the worker's slots; past that, a copy).

use std::borrow::Borrow;
use std::fmt;
use std::ops::{Deref, RangeBounds};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A cheaply cloneable, immutable block of bytes that crosses the process
/// boundary at full speed.
///
/// Use it for byte payloads (images, audio, compressed data, raw text) in a
/// worker's `Input` or `Output`, or in a field of them, instead of `Vec<u8>`:
/// it is encoded as one block of bytes by both codecs (postcard and
/// MessagePack), where `Vec<u8>` is encoded byte by byte.
///
/// ```
/// use mpserver::prelude::*;
/// use mpserver::Bytes;
/// use serde::{Deserialize, Serialize};
///
/// /// Upper-cases ASCII text.
/// #[derive(Serialize, Deserialize)]
/// struct Upper;
///
/// impl Worker for Upper {
///     type Input = Bytes;
///     type Output = Bytes;
///     fn call(&mut self, text: Bytes) -> Result<Bytes, WorkerError> {
///         Ok(text.to_ascii_uppercase().into()) // `[u8]` methods through Deref
///     }
/// }
///
/// # fn main() -> Result<(), mpserver::Error> {
/// let server = Server::start(ProcessServlet::new(Upper))?;
/// let out = server.call(Bytes::from("hello"))?;
/// assert_eq!(out, b"HELLO"[..]);
/// let back: Vec<u8> = out.into(); // no copy when `out` is the only owner
/// assert_eq!(back, b"HELLO");
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(::bytes::Bytes);

impl Bytes {
    /// An empty value (no allocation).
    pub const fn new() -> Self {
        Bytes(::bytes::Bytes::new())
    }

    /// Wraps a static slice without copying it.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Bytes(::bytes::Bytes::from_static(bytes))
    }

    /// Copies `data` into a new value.
    pub fn copy_from_slice(data: &[u8]) -> Self {
        Bytes(::bytes::Bytes::copy_from_slice(data))
    }

    /// The bytes, as a slice (also available through `Deref`).
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// A part of this value, sharing its storage (no copy).
    ///
    /// # Panics
    ///
    /// Panics if the range is out of bounds or decreasing, like slice indexing.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Self {
        Bytes(self.0.slice(range))
    }

    /// The bytes as a `Vec<u8>`: without copying when this value owns its
    /// whole storage alone (e.g. it came from a `Vec<u8>` or was decoded from
    /// a worker's message and never cloned), with one copy otherwise.
    pub fn into_vec(self) -> Vec<u8> {
        Vec::from(self.0)
    }

    /// The underlying [`bytes::Bytes`] (no copy).
    pub fn into_inner(self) -> ::bytes::Bytes {
        self.0
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Bytes {
    /// Like `bytes::Bytes`: `b"text\x00..."`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<Vec<u8>> for Bytes {
    /// Takes the vector's buffer over (no copy).
    fn from(v: Vec<u8>) -> Self {
        Bytes(::bytes::Bytes::from(v))
    }
}

impl From<Box<[u8]>> for Bytes {
    /// Takes the buffer over (no copy).
    fn from(v: Box<[u8]>) -> Self {
        Bytes(::bytes::Bytes::from(v))
    }
}

impl From<String> for Bytes {
    /// The string's UTF-8 bytes (no copy).
    fn from(s: String) -> Self {
        Bytes(::bytes::Bytes::from(s))
    }
}

impl From<&'static [u8]> for Bytes {
    /// Wraps the static slice (no copy).
    fn from(s: &'static [u8]) -> Self {
        Bytes::from_static(s)
    }
}

impl<const N: usize> From<&'static [u8; N]> for Bytes {
    /// Wraps the static array (no copy).
    fn from(s: &'static [u8; N]) -> Self {
        Bytes::from_static(s)
    }
}

impl From<&'static str> for Bytes {
    /// Wraps the static string's UTF-8 bytes (no copy).
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes())
    }
}

impl From<::bytes::Bytes> for Bytes {
    fn from(b: ::bytes::Bytes) -> Self {
        Bytes(b)
    }
}

impl From<Bytes> for ::bytes::Bytes {
    fn from(b: Bytes) -> Self {
        b.0
    }
}

impl From<Bytes> for Vec<u8> {
    /// See [`Bytes::into_vec`].
    fn from(b: Bytes) -> Self {
        b.into_vec()
    }
}

impl FromIterator<u8> for Bytes {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        Bytes::from(iter.into_iter().collect::<Vec<u8>>())
    }
}

impl<'a> IntoIterator for &'a Bytes {
    type Item = &'a u8;
    type IntoIter = std::slice::Iter<'a, u8>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for Bytes {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Bytes {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<u8>> for Bytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<Bytes> for Vec<u8> {
    fn eq(&self, other: &Bytes) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialEq<Bytes> for [u8] {
    fn eq(&self, other: &Bytes) -> bool {
        self == other.as_slice()
    }
}

impl Serialize for Bytes {
    /// One block of bytes (`serialize_bytes`): postcard writes a length and
    /// the bytes, MessagePack a `bin` value.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    /// Accepts a block of bytes (what [`Serialize`] writes), and, from
    /// self-describing formats, a string (its UTF-8 bytes) or a sequence of
    /// `u8` (what `Vec<u8>` writes), so data written either way decodes.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    /// A copy, or a view of the shared-memory slot the bytes lie in when a
    /// worker decodes its input from one (`ipc::shm::view`: decode-scoped,
    /// recognised by address; large blocks only).
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        if v.len() >= crate::ipc::shm::VIEW_MIN
            && let Some(view) = crate::ipc::shm::view_of(v)
        {
            return Ok(Bytes(view));
        }
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        self.visit_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Bytes::from(out))
    }
}

// Used by the debug-build warning only (and its tests).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
/// The part of a type name that marks the slow path: `Vec<u8>` serialised
/// element by element.
const SLOW_BYTES: &str = "alloc::vec::Vec<u8>";

/// Whether a type with this name (from [`std::any::type_name`]) visibly holds
/// a `Vec<u8>` (directly, or as a generic argument: `Option<Vec<u8>>`,
/// `(Vec<u8>, u32)`, ...). Fields of a named struct are not visible in its
/// name.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub(crate) fn names_slow_bytes(type_name: &str) -> bool {
    type_name.contains(SLOW_BYTES)
}

/// In debug builds, warns once per type (through `tracing`) when a process
/// servlet's input or output type visibly holds a `Vec<u8>`, which crosses the
/// process boundary byte by byte; [`Bytes`] is the fast way. Release builds
/// do nothing.
pub(crate) fn warn_if_slow_bytes<I: ?Sized, O: ?Sized>(servlet: &str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::Mutex;
        static WARNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
        for (side, name) in [
            ("input", std::any::type_name::<I>()),
            ("output", std::any::type_name::<O>()),
        ] {
            if !names_slow_bytes(name) {
                continue;
            }
            let first = {
                let mut warned = crate::sync::lock_std(&WARNED);
                let first = !warned.contains(&name);
                if first {
                    warned.push(name);
                }
                first
            };
            if first {
                tracing::warn!(
                    servlet,
                    side,
                    r#type = name,
                    "a process worker's {side} type holds Vec<u8>, which is encoded byte by byte \
                     (about 1.4x slower for large payloads); use mpserver::Bytes (or \
                     serde_bytes::ByteBuf) for byte payloads. This warning shows in debug builds only"
                );
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = servlet;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Codec;

    fn round_trip(codec: Codec, value: &Bytes) -> Bytes {
        let mut buf = Vec::new();
        codec.encode_into(&mut buf, value).unwrap();
        codec.decode(&buf).unwrap()
    }

    #[test]
    fn encodes_as_one_block_in_both_codecs() {
        // Non-ASCII bytes: as a sequence of u8, MessagePack would spend two
        // bytes on each value above 127; as one block it spends one.
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let b = Bytes::from(data.clone());

        let mut pc = Vec::new();
        Codec::Postcard.encode_into(&mut pc, &b).unwrap();
        let mut pc_buf = Vec::new();
        Codec::Postcard
            .encode_into(&mut pc_buf, &serde_bytes::ByteBuf::from(data.clone()))
            .unwrap();
        assert_eq!(pc, pc_buf, "postcard: same encoding as serde_bytes");

        let mut mp = Vec::new();
        Codec::MessagePack.encode_into(&mut mp, &b).unwrap();
        assert_eq!(mp[0], 0xc5, "MessagePack: a bin16 value");
        assert_eq!(mp.len(), 3 + data.len());

        assert_eq!(round_trip(Codec::Postcard, &b), data);
        assert_eq!(round_trip(Codec::MessagePack, &b), data);
        assert_eq!(round_trip(Codec::Postcard, &Bytes::new()), Bytes::new());
        assert_eq!(round_trip(Codec::MessagePack, &Bytes::new()), Bytes::new());
    }

    #[test]
    fn decodes_what_vec_u8_and_strings_wrote_in_messagepack() {
        let mut mp = Vec::new();
        Codec::MessagePack
            .encode_into(&mut mp, &vec![1u8, 200, 3])
            .unwrap();
        let b: Bytes = Codec::MessagePack.decode(&mp).unwrap();
        assert_eq!(b, [1u8, 200, 3]);

        let mut mp = Vec::new();
        Codec::MessagePack.encode_into(&mut mp, "héllo").unwrap();
        let b: Bytes = Codec::MessagePack.decode(&mp).unwrap();
        assert_eq!(b, "héllo".as_bytes());

        // A sequence holding a value that is not a u8 is a typed error.
        let mut mp = Vec::new();
        Codec::MessagePack
            .encode_into(&mut mp, &vec![1u32, 300])
            .unwrap();
        assert!(Codec::MessagePack.decode::<Bytes>(&mp).is_err());
        // A truncated message too.
        let mut pc = Vec::new();
        Codec::Postcard
            .encode_into(&mut pc, &Bytes::from(vec![9u8; 100]))
            .unwrap();
        assert!(Codec::Postcard.decode::<Bytes>(&pc[..50]).is_err());
    }

    #[test]
    fn conversions_share_or_take_storage() {
        let v = vec![5u8; 1000];
        let ptr = v.as_ptr();
        let b = Bytes::from(v);
        assert_eq!(b.as_ptr(), ptr, "From<Vec<u8>> takes the buffer over");
        let c = b.clone();
        assert_eq!(c.as_ptr(), ptr, "clone shares the storage");
        let part = b.slice(10..20);
        assert_eq!(part.len(), 10);
        assert_eq!(
            part.as_ptr(),
            ptr.wrapping_add(10),
            "slice shares the storage"
        );
        drop((c, part));
        let back: Vec<u8> = b.into();
        assert_eq!(back.as_ptr(), ptr, "sole owner: into Vec without a copy");

        let s = Bytes::from("abc");
        assert_eq!(&*s, b"abc");
        assert_eq!(Bytes::from(String::from("abc")), s);
        assert_eq!(Bytes::from(&b"abc"[..]), s);
        assert_eq!(Bytes::from(b"abc"), s);
        assert_eq!(Bytes::copy_from_slice(b"abc"), s);
        assert_eq!(s.iter().copied().collect::<Bytes>(), s);
        assert_eq!(Bytes::from(::bytes::Bytes::from_static(b"abc")), s);
        assert_eq!(::bytes::Bytes::from(s.clone()), &b"abc"[..]);
        assert_eq!(vec![b'a', b'b', b'c'], s);
        assert_eq!(format!("{s:?}"), r#"b"abc""#);
        assert!(Bytes::new().is_empty());
    }

    #[test]
    fn slow_byte_types_are_recognised_by_name() {
        use std::any::type_name;
        assert!(names_slow_bytes(type_name::<Vec<u8>>()));
        assert!(names_slow_bytes(type_name::<Option<Vec<u8>>>()));
        assert!(names_slow_bytes(type_name::<(u32, Vec<u8>)>()));
        assert!(names_slow_bytes(type_name::<Vec<Vec<u8>>>()));
        assert!(!names_slow_bytes(type_name::<Bytes>()));
        assert!(!names_slow_bytes(type_name::<Vec<u16>>()));
        assert!(!names_slow_bytes(type_name::<Vec<u64>>()));
        assert!(!names_slow_bytes(type_name::<serde_bytes::ByteBuf>()));
        assert!(!names_slow_bytes(type_name::<String>()));
    }
}
