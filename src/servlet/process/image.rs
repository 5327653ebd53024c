//! Which executable image a function lives in, and the one `unsafe` step of
//! the re-exec launcher: turning a parent's function offset into a function.
//!
//! The re-exec launcher (see `spawn.rs`) names the worker's entry by its
//! distance from a fixed anchor function. That distance means the same
//! function in the child only if
//!
//! 1. the child runs the very same image as the parent (not a file replaced
//!    on disk during an upgrade): the parent sends the identity of the file
//!    its anchor lives in (device, inode, size, modification time) and the
//!    child compares it with its own, and
//! 2. the anchor and the target both live in the main executable (with this
//!    crate built as a dylib, or under `-C prefer-dynamic`, the anchor sits in
//!    a shared library loaded at its own base, so the distance between it and
//!    a function of the executable changes from process to process): the
//!    parent checks that before spawning, and the child checks that the
//!    computed address falls in an executable mapping of its main executable.
//!
//! Both facts are read from `/proc/self/maps` and `stat` of `/proc/self/exe`,
//! with no `unsafe`. Only [`resolve`] converts the checked address into a
//! function pointer.

use std::fs;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

use std::os::unix::net::UnixStream;

use crate::ipc::reader::FrameReader;
use crate::worker::{WorkerContext, WorkerError};

/// The transport handed to a worker entry.
pub(crate) struct Boot {
    pub(crate) reader: FrameReader<UnixStream>,
    pub(crate) writer: UnixStream,
    /// The worker type the server expects this process to serve.
    pub(crate) type_name: String,
    /// The hook to run before the worker's init, if any.
    pub(crate) start_hook: Option<StartHook>,
    /// Capture backtraces of worker errors and panics.
    pub(crate) backtraces: bool,
    /// Forward `tracing` events up to this level (0: none).
    pub(crate) log_level: u8,
}

/// The type of a worker entry function.
pub(crate) type Entry = fn(Boot);

/// The identity of the file an image was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {:#x}, inode {}, {} bytes, modified {}.{:09}",
            self.dev,
            self.ino,
            self.size,
            self.mtime_ns.div_euclid(1_000_000_000),
            self.mtime_ns.rem_euclid(1_000_000_000)
        )
    }
}

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    exec: bool,
    major: u64,
    minor: u64,
    ino: u64,
    path: String,
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?;
    let _offset = it.next()?;
    let dev = it.next()?;
    let ino = it.next()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    Some(Mapping {
        start: usize::from_str_radix(start, 16).ok()?,
        end: usize::from_str_radix(end, 16).ok()?,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        major: u64::from_str_radix(major, 16).ok()?,
        minor: u64::from_str_radix(minor, 16).ok()?,
        ino: ino.parse().ok()?,
        path,
    })
}

/// The mapping of this process that contains `addr`.
fn mapping_of(maps: &str, addr: usize) -> Option<Mapping> {
    maps.lines()
        .filter_map(parse_maps_line)
        .find(|m| m.start <= addr && addr < m.end)
}

fn maps() -> Result<String, String> {
    fs::read_to_string("/proc/self/maps").map_err(|e| format!("cannot read /proc/self/maps: {e}"))
}

fn id_of(meta: &fs::Metadata) -> ImageId {
    ImageId {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    }
}

fn same_file(m: &Mapping, id: &ImageId) -> bool {
    m.ino == id.ino
        && m.major == nix::sys::stat::major(id.dev)
        && m.minor == nix::sys::stat::minor(id.dev)
}

/// The identity of this process's main executable.
pub(crate) fn main_executable() -> Result<ImageId, String> {
    fs::metadata("/proc/self/exe")
        .map(|m| id_of(&m))
        .map_err(|e| format!("cannot stat /proc/self/exe: {e}"))
}

/// The function every offset is measured from.
#[inline(never)]
pub(crate) fn anchor(_: Boot) {}

fn anchor_addr() -> usize {
    anchor as Entry as usize
}

/// The identity of the file holding this crate's code (the main executable
/// when linked statically, else the shared library that holds it, e.g. a
/// Python extension module).
pub(crate) fn code_image() -> Result<ImageId, String> {
    let maps = maps()?;
    let m = mapping_of(&maps, anchor_addr())
        .ok_or("this crate's code is in no mapping of /proc/self/maps")?;
    let exe = main_executable()?;
    if same_file(&m, &exe) {
        return Ok(exe);
    }
    let path = m.path.trim_end_matches(" (deleted)");
    match fs::metadata(path) {
        Ok(meta) if same_file(&m, &id_of(&meta)) => Ok(id_of(&meta)),
        // The file was replaced since it was loaded: only device and inode
        // are known, which a new process loading the new file will not match.
        _ => Ok(ImageId {
            dev: nix::sys::stat::makedev(m.major, m.minor),
            ino: m.ino,
            size: 0,
            mtime_ns: 0,
        }),
    }
}

/// Checks, in the parent, that `addrs` (the anchor is added) all lie in the
/// main executable, so that their distances hold in a re-executed child.
pub(crate) fn check_in_main_executable(what: &[(&str, usize)]) -> Result<ImageId, String> {
    let maps = maps()?;
    let exe = main_executable()?;
    for (name, addr) in [("the mpserver anchor", anchor_addr())]
        .into_iter()
        .chain(what.iter().copied())
    {
        match mapping_of(&maps, addr) {
            Some(m) if m.exec && same_file(&m, &exe) => {}
            Some(m) => {
                return Err(format!(
                    "{name} is in {:?}, not in the main executable: mpserver is linked \
                     dynamically (built as a dylib or with `-C prefer-dynamic`), and the \
                     re-exec launcher cannot find functions in a re-executed process; link \
                     mpserver statically or give the servlet a custom `Launcher`",
                    m.path
                ));
            }
            None => return Err(format!("{name} is in no mapping of /proc/self/maps")),
        }
    }
    Ok(exe)
}

/// Function pointer types that [`resolve`] may produce.
pub(crate) trait FnPtr: Copy + sealed::Sealed {
    /// The address of the function.
    fn addr(self) -> usize;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Entry {}
    impl Sealed for super::StartHook {}
}

/// A hook run in a worker process before the worker's `init`.
pub(crate) type StartHook = fn(&WorkerContext) -> Result<(), WorkerError>;

impl FnPtr for Entry {
    fn addr(self) -> usize {
        self as usize
    }
}

impl FnPtr for StartHook {
    fn addr(self) -> usize {
        self as usize
    }
}

/// Offset of `f` from the anchor, valid in any process running this image.
pub(crate) fn offset_of<F: FnPtr>(f: F) -> u64 {
    f.addr().wrapping_sub(anchor_addr()) as u64
}

/// In a re-executed child: the function at `offset` from the anchor, after
/// checking that this process runs the image `parent` (the parent's main
/// executable, which also holds the parent's anchor and target) and that the
/// address lies in an executable mapping of our main executable.
pub(crate) fn resolve<F: FnPtr>(offset: u64, parent: &ImageId) -> Result<F, String> {
    let ours = main_executable()?;
    if ours != *parent {
        return Err(format!(
            "this worker process runs another executable image than its server \
             (server: {parent}; worker: {ours}); was the executable replaced or rebuilt \
             while the server ran?"
        ));
    }
    let maps = maps()?;
    let base = anchor_addr();
    let addr = base.wrapping_add(offset as usize);
    for (name, a) in [("the mpserver anchor", base), ("the worker entry", addr)] {
        match mapping_of(&maps, a) {
            Some(m) if m.exec && same_file(&m, &ours) => {}
            _ => {
                return Err(format!(
                    "{name} ({a:#x}) is not in an executable mapping of the main executable; \
                     is mpserver linked dynamically?"
                ));
            }
        }
    }
    if size_of::<F>() != size_of::<usize>() {
        return Err("function pointers are not the size of an address here".into());
    }
    #[allow(unsafe_code)]
    // SAFETY: `F` is a function pointer type (the `FnPtr` trait is sealed and
    // implemented only for the two function pointer types above), which has
    // the size and representation of `usize`. `addr` is the address of a
    // function of type `F`: the parent took `offset` as the distance from its
    // `anchor` to a function of that type (`offset_of::<F>`), after checking
    // that both live in its main executable; we checked above that this
    // process runs the same file (device, inode, size and modification time
    // of `/proc/self/exe`) and that our anchor and `addr` lie in executable
    // mappings of it. The same image loaded at another base keeps distances
    // between its functions, so `addr` is that function in this process.
    let f = unsafe { std::mem::transmute_copy::<usize, F>(&addr) };
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_entry(_: Boot) {}

    fn some_hook(_: &WorkerContext) -> Result<(), WorkerError> {
        Ok(())
    }

    #[test]
    fn offsets_resolve_within_one_image() {
        let exe = main_executable().unwrap();
        let e: Entry = resolve(offset_of(some_entry as Entry), &exe).unwrap();
        assert_eq!(e as usize, some_entry as Entry as usize);
        let h: StartHook = resolve(offset_of(some_hook as StartHook), &exe).unwrap();
        assert_eq!(h as usize, some_hook as StartHook as usize);
    }

    #[test]
    fn another_image_is_refused() {
        let mut other = main_executable().unwrap();
        other.mtime_ns += 1;
        let e = resolve::<Entry>(offset_of(some_entry as Entry), &other).unwrap_err();
        assert!(e.contains("another executable image"), "{e}");
        let mut other = main_executable().unwrap();
        other.ino += 1;
        assert!(resolve::<Entry>(offset_of(some_entry as Entry), &other).is_err());
    }

    #[test]
    fn an_address_outside_the_executable_is_refused() {
        let exe = main_executable().unwrap();
        // A function of the C library (a shared object), and a heap address.
        let libc_fn = libc_function();
        let e = resolve::<Entry>(libc_fn.wrapping_sub(anchor_addr()) as u64, &exe).unwrap_err();
        assert!(e.contains("not in an executable mapping"), "{e}");
        let heap = Box::new(0u64);
        let a = &*heap as *const u64 as usize;
        assert!(resolve::<Entry>(a.wrapping_sub(anchor_addr()) as u64, &exe).is_err());
        let e = check_in_main_executable(&[("a C library function", libc_fn)]).unwrap_err();
        assert!(e.contains("linked dynamically"), "{e}");
    }

    /// The address of a function in a shared library mapped into this process
    /// (the vDSO or the C library).
    fn libc_function() -> usize {
        let maps = maps().unwrap();
        let exe = main_executable().unwrap();
        maps.lines()
            .filter_map(parse_maps_line)
            .find(|m| m.exec && !same_file(m, &exe) && m.ino != 0)
            .or_else(|| {
                maps.lines()
                    .filter_map(parse_maps_line)
                    .find(|m| m.exec && !same_file(m, &exe))
            })
            .map(|m| m.start + 16)
            .expect("some executable mapping outside the main executable")
    }

    #[test]
    fn the_crate_is_in_the_main_executable() {
        let exe = check_in_main_executable(&[("an entry", some_entry as Entry as usize)]).unwrap();
        assert_eq!(code_image().unwrap(), exe);
    }

    #[test]
    fn maps_lines_parse() {
        let m = parse_maps_line(
            "55d0c5a00000-55d0c5a21000 r-xp 00002000 fd:01 1234567                    /usr/bin/cat",
        )
        .unwrap();
        assert_eq!(m.start, 0x55d0_c5a0_0000);
        assert!(m.exec);
        assert_eq!((m.major, m.minor, m.ino), (0xfd, 1, 1_234_567));
        assert_eq!(m.path, "/usr/bin/cat");
        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.exec);
        assert_eq!(anon.path, "");
    }
}
