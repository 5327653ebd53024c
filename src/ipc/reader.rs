//! Reading frames (see [`frame`](super::frame)) from a byte stream: a
//! buffered reader that never trusts a length, and for sockets can look for
//! input without waiting and tells whether its last read drained the socket.

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, RawFd};

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{FrameError, kind};

/// The transport under a [`FrameReader`]: remembers whether its last read
/// got everything that was waiting, and (for sockets) can read without
/// waiting.
struct Probe<R> {
    inner: R,
    /// The socket, for reads that must not wait.
    fd: Option<RawFd>,
    nowait: bool,
    drained: bool,
}

impl<R: Read> Read for Probe<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.fd {
            Some(fd) if self.nowait => {
                use nix::sys::socket::{MsgFlags, recv};
                recv(fd, buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?
            }
            _ => self.inner.read(buf)?,
        };
        self.drained = n < buf.len();
        Ok(n)
    }
}

/// Smallest buffer of [`FrameReader::read_frame_shared`].
const SHARED_MIN: usize = 64 * 1024;

/// Largest frame other than RESULTS that [`FrameReader::read_frame_shared`]
/// reads into a buffer of its own while an earlier body still holds the
/// shared one (the TIMING frame that a worker writes with its RESULTS, read
/// while the caller still holds its result), instead of a fresh `SHARED_MIN`
/// one.
const SMALL_FRAME: usize = 1024;

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: BufReader<Probe<R>>,
    body: Vec<u8>,
    /// The buffer of [`FrameReader::read_frame_shared`]: bodies are split
    /// off it, and its allocation is reused once they are all dropped.
    shared: BytesMut,
    /// The buffer of small frames read while an earlier body holds `shared`
    /// (see [`SMALL_FRAME`]): reused like `shared` once its body is dropped.
    small: BytesMut,
    max: usize,
}

impl<R> std::fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<R: Read + AsRawFd> FrameReader<R> {
    /// A reader of a socket, which can also look for input without waiting
    /// ([`FrameReader::fill_nowait`]).
    pub fn socket(inner: R, max: usize) -> Self {
        let fd = inner.as_raw_fd();
        let mut r = FrameReader::new(inner, max);
        r.inner.get_mut().fd = Some(fd);
        r
    }
}

impl<R: Read> FrameReader<R> {
    /// A reader accepting frames of at most `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner: BufReader::with_capacity(
                64 * 1024,
                Probe {
                    inner,
                    fd: None,
                    nowait: false,
                    drained: false,
                },
            ),
            body: Vec::new(),
            shared: BytesMut::new(),
            small: BytesMut::new(),
            max,
        }
    }

    /// Accepts frames of at most `max` bytes from now on (a worker process
    /// learns its servlet's limit from the CONFIG frame).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Bytes already read from the transport but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.inner.buffer().len()
    }

    /// True if the last read from the transport got less than it asked for:
    /// nothing more was waiting at that moment (a hint, to skip a system
    /// call that would look for more).
    pub fn drained(&self) -> bool {
        self.inner.get_ref().drained
    }

    /// Reads whatever input is waiting into the buffer, without waiting for
    /// more (sockets made with [`FrameReader::socket`]; other transports
    /// read as usual). Returns the bytes buffered; `Ok(0)` if none were
    /// waiting or at the end of the stream.
    pub fn fill_nowait(&mut self) -> io::Result<usize> {
        if self.buffered() > 0 {
            return Ok(self.buffered());
        }
        self.inner.get_mut().nowait = true;
        let r = self.inner.fill_buf().map(|b| b.len());
        self.inner.get_mut().nowait = false;
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &R {
        &self.inner.get_ref().inner
    }

    /// Reads a frame's length (`None`: a clean end of stream).
    fn read_len(&mut self) -> Result<Option<usize>, FrameError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(FrameError::Truncated),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            return Err(FrameError::Malformed("empty frame"));
        }
        if len > self.max {
            return Err(FrameError::Oversized(len));
        }
        Ok(Some(len))
    }

    fn read_body(inner: &mut BufReader<Probe<R>>, body: &mut [u8]) -> Result<(), FrameError> {
        inner.read_exact(body).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                FrameError::Truncated
            } else {
                FrameError::Io(e)
            }
        })
    }

    /// Reads the next frame: `Ok(None)` on a clean end of stream (between
    /// frames). Returns the kind and the body.
    pub fn read_frame(&mut self) -> Result<Option<(u8, &[u8])>, FrameError> {
        let Some(len) = self.read_len()? else {
            return Ok(None);
        };
        // The buffer only grows (zero-filling just the growth); the read
        // overwrites the part in use, so large frames cost no memset each.
        if self.body.len() < len {
            self.body.resize(len, 0);
        }
        let body = &mut self.body[..len];
        Self::read_body(&mut self.inner, body)?;
        Ok(Some((body[0], &body[1..])))
    }

    /// Like [`FrameReader::read_frame`], but the body is returned as
    /// reference-counted [`Bytes`] that may outlive the next read: parts of
    /// it (say, each result of a frame) can be kept and decoded elsewhere
    /// without a copy each. Once every body returned has been dropped, the
    /// next frame reuses their allocation.
    pub fn read_frame_shared(&mut self) -> Result<Option<(u8, Bytes)>, FrameError> {
        let Some(len) = self.read_len()? else {
            return Ok(None);
        };
        self.shared.clear();
        let want = len.max(SHARED_MIN);
        // The frame's kind, if its first byte is buffered already.
        let small_other = len <= SMALL_FRAME
            && self
                .inner
                .buffer()
                .first()
                .is_some_and(|&k| k != kind::RESULTS);
        let mut body =
            if small_other && self.shared.capacity() > 0 && !self.shared.try_reclaim(want) {
                // An earlier body still holds the shared allocation: a small
                // frame that is not results gets a small buffer rather than a
                // fresh `SHARED_MIN` one (a malloc and free of 64 KiB per call
                // on the single-call path, where the worker's TIMING frame
                // follows each result), and the shared allocation is reused
                // once that body goes. The small buffer's own allocation is
                // reused too once its last body (the previous TIMING frame,
                // acted on at once) is dropped.
                if !self.small.try_reclaim(len) {
                    self.small = BytesMut::with_capacity(SMALL_FRAME);
                }
                self.small.resize(len, 0);
                Self::read_body(&mut self.inner, &mut self.small[..])?;
                self.small.split().freeze()
            } else {
                // Reclaims the whole allocation when no earlier body is alive
                // (at least `SHARED_MIN`, so that frames of varied small sizes
                // reuse one).
                self.shared.reserve(want);
                self.shared.resize(len, 0);
                Self::read_body(&mut self.inner, &mut self.shared[..])?;
                self.shared.split().freeze()
            };
        let kind = body[0];
        body.advance(1);
        Ok(Some((kind, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::frame::{DEFAULT_MAX_FRAME, FrameBuf, ItemFrames, Payload, kind, parse_items};

    #[test]
    fn socket_reader_looks_without_waiting_and_knows_when_it_drained() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = FrameReader::socket(a, DEFAULT_MAX_FRAME);
        // Nothing waiting: no wait, nothing buffered.
        assert_eq!(r.fill_nowait().unwrap(), 0);
        let mut f = FrameBuf::new();
        f.frame(kind::RETIRING, b"x");
        f.frame(kind::RETIRING, b"yz");
        b.write_all(f.as_bytes()).unwrap();
        let n = r.fill_nowait().unwrap();
        assert_eq!(n, f.len());
        assert!(r.drained(), "a short read got all that was waiting");
        assert_eq!(r.read_frame().unwrap(), Some((kind::RETIRING, &b"x"[..])));
        assert!(r.buffered() > 0);
        assert_eq!(r.read_frame().unwrap(), Some((kind::RETIRING, &b"yz"[..])));
        assert_eq!(r.buffered(), 0);
        drop(b);
        // At the end of the stream: nothing buffered, and a clean end.
        assert_eq!(r.fill_nowait().unwrap(), 0);
        assert_eq!(r.read_frame().unwrap(), None);
    }

    #[test]
    fn shared_bodies_outlive_later_reads_and_their_buffer_is_reused() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = FrameReader::socket(a, DEFAULT_MAX_FRAME);
        let mut f = FrameBuf::new();
        f.frame(kind::RESULTS, b"first body");
        f.frame(kind::RESULTS, b"second");
        f.frame(kind::LOG, b"third body");
        b.write_all(f.as_bytes()).unwrap();
        let (k1, one) = r.read_frame_shared().unwrap().unwrap();
        let part = one.slice(0..5);
        drop(one);
        let (k2, two) = r.read_frame_shared().unwrap().unwrap();
        let at = two.as_ptr();
        // Read while a part of the first body is alive: both intact.
        assert_eq!((k1, &part[..]), (kind::RESULTS, &b"first"[..]));
        assert_eq!((k2, &two[..]), (kind::RESULTS, &b"second"[..]));
        drop((part, two));
        // Nothing of the earlier bodies alive: the last allocation again.
        let (k3, three) = r.read_frame_shared().unwrap().unwrap();
        assert_eq!((k3, &three[..]), (kind::LOG, &b"third body"[..]));
        assert_eq!(three.as_ptr(), at, "the buffer was not reused");
        drop(b);
        assert!(r.read_frame_shared().unwrap().is_none());
    }

    /// A small frame read while an earlier body holds the shared buffer
    /// (the TIMING frame read after a caller's own result) does not take a
    /// new shared allocation: once that body goes, the next frame is in the
    /// first allocation again.
    #[test]
    fn a_small_frame_read_beside_a_live_body_keeps_the_shared_buffer() {
        use std::io::Write;
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = FrameReader::socket(a, DEFAULT_MAX_FRAME);
        let mut f = FrameBuf::new();
        f.frame(kind::RESULTS, b"result");
        f.frame(kind::TIMING, b"timing");
        f.frame(kind::RESULTS, b"next result");
        f.frame(kind::RESULTS, &[7u8; 2 * SMALL_FRAME]);
        b.write_all(f.as_bytes()).unwrap();
        let (k1, one) = r.read_frame_shared().unwrap().unwrap();
        let first = one.as_ptr();
        let (k2, two) = r.read_frame_shared().unwrap().unwrap();
        assert_eq!((k1, &one[..]), (kind::RESULTS, &b"result"[..]));
        assert_eq!((k2, &two[..]), (kind::TIMING, &b"timing"[..]));
        drop((one, two));
        let (k3, three) = r.read_frame_shared().unwrap().unwrap();
        assert_eq!((k3, &three[..]), (kind::RESULTS, &b"next result"[..]));
        assert_eq!(three.as_ptr(), first, "the shared buffer was replaced");
        // A large frame beside a live body still gets a shared buffer.
        let (k4, four) = r.read_frame_shared().unwrap().unwrap();
        assert_eq!((k4, four.len()), (kind::RESULTS, 2 * SMALL_FRAME));
        assert!(four.iter().all(|&x| x == 7));
        drop((three, four));
        drop(b);
        assert!(r.read_frame_shared().unwrap().is_none());
    }

    fn items_frame(items: &[(u64, &[u8])], batched: bool) -> Vec<u8> {
        let mut f = ItemFrames::new(batched, usize::MAX);
        for (i, (id, p)) in items.iter().enumerate() {
            f.push_raw(p);
            f.set_id(i, *id);
        }
        f.bytes().to_vec()
    }

    #[test]
    fn item_frames_split_assign_ids_and_roll_back() {
        let mut f = ItemFrames::new(false, 40);
        for i in 0..6u8 {
            f.push_raw(&[i; 20]);
        }
        // A failing payload leaves nothing behind.
        assert!(
            f.push(|v| {
                v.extend_from_slice(b"partial");
                Err(())
            })
            .is_err()
        );
        f.push_raw(b"last");
        f.pop();
        assert_eq!(f.len(), 6);
        assert_eq!(f.payload(2), &[2u8; 20]);
        f.assign_ids(100);
        let bytes = f.bytes().to_vec();
        let mut r = FrameReader::new(&bytes[..], 1 << 20);
        let mut seen = Vec::new();
        while let Some((k, body)) = r.read_frame().unwrap() {
            assert_eq!(k, kind::ITEMS);
            let (batched, items) = parse_items(body).unwrap();
            assert!(!batched);
            assert!(body.len() <= 40 + 33, "split: {}", body.len());
            seen.extend(
                items
                    .into_iter()
                    .map(|(id, p)| (id, p.inline().unwrap()[0])),
            );
        }
        assert_eq!(
            seen,
            (0..6u8).map(|i| (100 + i as u64, i)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn items_round_trip() {
        let bytes = items_frame(&[(1, b"ab"), (7, b""), (9, b"xyz")], true);
        let mut r = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME);
        let (k, body) = r.read_frame().unwrap().unwrap();
        assert_eq!(k, kind::ITEMS);
        let (batched, items) = parse_items(body).unwrap();
        assert!(batched);
        assert_eq!(
            items,
            vec![
                (1, Payload::Inline(&b"ab"[..])),
                (7, Payload::Inline(&b""[..])),
                (9, Payload::Inline(&b"xyz"[..]))
            ]
        );
        assert!(r.read_frame().unwrap().is_none());
    }

    #[test]
    fn truncation_is_detected() {
        let bytes = items_frame(&[(1, b"abc")], false);
        for cut in 1..bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut], DEFAULT_MAX_FRAME);
            assert!(
                matches!(r.read_frame(), Err(FrameError::Truncated)),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn oversized_is_rejected_before_allocating() {
        let bytes = (u32::MAX).to_le_bytes();
        let mut r = FrameReader::new(&bytes[..], 1024);
        assert!(matches!(r.read_frame(), Err(FrameError::Oversized(_))));
    }
}
