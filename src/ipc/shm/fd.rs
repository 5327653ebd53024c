//! Passing the region's descriptor with a frame (`SCM_RIGHTS`).

use super::region::invalid;
use super::*;

/// A frame's kind and body, and the descriptor that came with it.
pub type FrameWithFd = (u8, Vec<u8>, Option<OwnedFd>);

/// Writes `bytes` (whole frames) to `sock` with `fd` attached to the first
/// byte (`SCM_RIGHTS`), then the rest with plain writes.
pub fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[io::IoSlice::new(bytes)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.map_err(io::Error::from)?,
        }
    };
    (&*sock).write_all(&bytes[sent..])
}

/// Reads one frame (`len:u32 kind:u8 body`, at most `max` bytes) straight
/// from `sock` (nothing may be buffered ahead of it), with a file
/// descriptor that came with it, if one did.
pub fn recv_frame_with_fd(sock: &UnixStream, max: usize) -> io::Result<Option<FrameWithFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut head = [0u8; 5];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut fd = None;
    let got = loop {
        let mut iov = [io::IoSliceMut::new(&mut head)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just installed `raw` in this
                            // process for us (SCM_RIGHTS); nothing else owns it.
                            #[allow(unsafe_code)]
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
                break msg.bytes;
            }
        }
    };
    if got == 0 {
        return Ok(None);
    }
    (&*sock).read_exact(&mut head[got..])?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len - 1 > max {
        return Err(invalid("bad frame length"));
    }
    let mut body = vec![0u8; len - 1];
    (&*sock).read_exact(&mut body)?;
    Ok(Some((head[4], body, fd)))
}
