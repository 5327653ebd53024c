//! The value that flows through a Python flow, and its pickle.
//!
//! A [`PyValue`] is a Python object, or its [`Pickle`] where it came out of a
//! worker process: bytes read from a worker's socket stay bytes until Python
//! code needs the object (a thread worker, a switch, the caller), so a value
//! passing from one process stage to the next is never unpickled in the
//! server process and never needs the GIL there. Ensemble outputs are lists of
//! values, made into a Python `list` only when Python needs them.
//!
//! Pickles are protocol 5 with out-of-band buffers: a `bytes` or `bytearray`
//! object of at least [`OOB_MIN`] bytes crosses as itself (no pickling at
//! all), and the `PickleBuffer`s of other objects (numpy arrays, objects
//! holding a `PickleBuffer`, a `PickleBuffer` itself) cross beside the pickle
//! instead of inside it. (Inside a container, `bytes` and `bytearray` are
//! written into the pickle: pickle offers no hook for them.)
//! On the sending side such a buffer is the Python `bytes` object itself
//! (read in place when the frame is written); on the receiving side it is
//! copied once from the frame into a `bytes` (read-only buffers) or
//! `bytearray` (writable ones) that `pickle.loads` hands to the object's
//! reconstructor, so a large `bytes` is rebuilt without a further copy and a
//! numpy array uses that memory as it is.
//!
//! This module knows nothing of errors or of converting values back to Python
//! objects; [`crate::convert`] does that (and serializes composite values).

use std::fmt;
use std::sync::{Arc, OnceLock};

use mpserver::Error;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};

/// Smallest `bytes` or `bytearray` sent as itself rather than pickled
/// (smaller ones are cheaper inside the pickle).
pub const OOB_MIN: usize = 64 * 1024;

/// A value in a Python flow.
#[derive(Clone)]
pub enum PyValue {
    /// A live Python object (with its pickle once made, so that ensemble
    /// members in processes share one pickling).
    Obj(Arc<Live>),
    /// A pickle (from a worker process), unpickled when Python needs it.
    Pickled(Arc<Pickle>),
    /// The output of an ensemble: one value per member.
    List(Vec<PyValue>),
    /// A member's error in the output of an ensemble with `fail_fast=False`.
    Failed(Arc<Failed>),
}

impl fmt::Debug for PyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyValue::Obj(_) => f.write_str("PyValue::Obj"),
            PyValue::Pickled(p) => write!(f, "PyValue::Pickled({} bytes)", p.len()),
            PyValue::List(v) => f.debug_tuple("PyValue::List").field(v).finish(),
            PyValue::Failed(e) => write!(f, "PyValue::Failed({})", e.error),
        }
    }
}

/// A Python object and, once made, its pickle.
pub struct Live {
    pub(crate) obj: Py<PyAny>,
    pub(crate) pickle: OnceLock<Arc<Pickle>>,
}

/// An ensemble member's error standing in the ensemble's output, with its
/// Python exception once made: every conversion of the value gives that one
/// exception (an [`mpserver::error::EnsembleError`]'s partial values can be
/// taken only once).
pub struct Failed {
    /// The member's error.
    pub error: Error,
    pub(crate) exception: PyOnceLock<Py<PyAny>>,
}

impl Failed {
    /// A member's error.
    pub fn new(error: Error) -> Self {
        Failed {
            error,
            exception: PyOnceLock::new(),
        }
    }
}

impl PyValue {
    /// Wraps a Python object.
    pub fn from_obj(obj: Bound<'_, PyAny>) -> Self {
        PyValue::Obj(Arc::new(Live {
            obj: obj.unbind(),
            pickle: OnceLock::new(),
        }))
    }

    /// A Python object about to enter process stages only: its pickle alone
    /// (made now, with the GIL), so that the engine holds no Python object
    /// (whose release without the GIL would be deferred to the next holder
    /// of the GIL). An object that does not pickle is kept as is (its stage
    /// then fails it as a codec error).
    pub fn pickled_only(obj: Bound<'_, PyAny>) -> Self {
        match Pickle::dumps(&obj) {
            Ok(p) => PyValue::Pickled(Arc::new(p)),
            Err(_) => PyValue::from_obj(obj),
        }
    }

    /// Wraps a Python object about to enter a process stage: its pickle is
    /// made now, while the caller holds the GIL, so the engine's threads need
    /// not take it. An object that does not pickle is kept as is (its stage
    /// then fails it as a codec error).
    pub fn from_obj_pickled(obj: Bound<'_, PyAny>) -> Self {
        let pickle = OnceLock::new();
        if let Ok(p) = Pickle::dumps(&obj) {
            let _ = pickle.set(Arc::new(p));
        }
        PyValue::Obj(Arc::new(Live {
            obj: obj.unbind(),
            pickle,
        }))
    }
}

/// Bytes of a pickle: owned (read from a frame, or a small pickle), or a
/// Python `bytes` object read in place.
pub enum Chunk {
    /// Bytes owned by the engine.
    Owned(Vec<u8>),
    /// A Python `bytes` object.
    Py(PyBytesRef),
}

impl Chunk {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Py(b) => b.as_slice(),
        }
    }
}

/// A Python `bytes` object whose contents are read without the GIL.
pub struct PyBytesRef {
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr`/`len` describe the contents of the `bytes` object that `_obj`
// keeps alive. CPython stores a `bytes` object's contents inline in the
// object, never moves it and never changes it after creation, so the memory
// stays valid and unchanged for as long as the reference is held, and reading
// it needs no GIL. The pointer is never written through.
unsafe impl Send for PyBytesRef {}
// SAFETY: as for `Send`: shared access only ever reads immutable memory.
unsafe impl Sync for PyBytesRef {}

impl PyBytesRef {
    /// Holds `b` and notes where its contents are.
    pub fn new(b: Bound<'_, PyBytes>) -> Self {
        let s = b.as_bytes();
        let (ptr, len) = (s.as_ptr(), s.len());
        PyBytesRef {
            _obj: b.unbind(),
            ptr,
            len,
        }
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: see the `Send` impl: the memory is the contents of the
        // `bytes` object held by `self._obj`, alive and immutable while `self`
        // lives, and `len` is its length.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// An out-of-band buffer of a pickle.
pub struct Buffer {
    /// Whether the object it came from was read-only (`bytes`): rebuilt as
    /// `bytes`, else as `bytearray`.
    pub readonly: bool,
    /// Its bytes.
    pub data: Chunk,
}

/// How a value crosses: pickled, or (for the commonest values) as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `data` is a pickle (protocol 5); `buffers` its out-of-band buffers.
    Pickle,
    /// The value is the single buffer, a `bytes` (read-only) or `bytearray`
    /// object.
    Raw,
    /// An `int` that fits 64 bits: `data` is its 8 bytes, little-endian.
    Int,
    /// A `str`: `data` is its UTF-8.
    Str,
    /// A `float`: `data` is its 8 bytes, little-endian.
    Float,
    /// A `tuple` of at most [`TUPLE_MAX`] `int`s (64 bits), `str`s and
    /// `float`s: `data` is each element in turn, a tag byte (that of
    /// [`Form::Int`], [`Form::Str`] or [`Form::Float`]) and then 8 bytes, or
    /// for a `str` its UTF-8 length (4 bytes, little-endian) and its UTF-8.
    Tuple,
}

/// Most elements of a tuple sent as [`Form::Tuple`] (longer ones are
/// pickled).
pub const TUPLE_MAX: usize = 8;

impl Form {
    fn tag(self) -> u8 {
        match self {
            Form::Pickle => 0,
            Form::Raw => 1,
            Form::Int => 2,
            Form::Str => 3,
            Form::Float => 4,
            Form::Tuple => 5,
        }
    }

    fn from_tag(t: u8) -> Option<Form> {
        Some(match t {
            0 => Form::Pickle,
            1 => Form::Raw,
            2 => Form::Int,
            3 => Form::Str,
            4 => Form::Float,
            5 => Form::Tuple,
            _ => return None,
        })
    }

    /// Its name (for tests).
    pub fn name(self) -> &'static str {
        match self {
            Form::Pickle => "pickle",
            Form::Raw => "raw",
            Form::Int => "int",
            Form::Str => "str",
            Form::Float => "float",
            Form::Tuple => "tuple",
        }
    }
}

/// A value as it crosses a process boundary: a pickle (protocol 5) and its
/// out-of-band buffers, a large `bytes` or `bytearray` as itself, or an
/// `int`, `str` or `float` in its own encoding (no pickler or unpickler made
/// for the commonest items).
pub struct Pickle {
    /// What `data` and `buffers` hold.
    pub form: Form,
    /// The pickle, or the scalar's bytes (empty for [`Form::Raw`]).
    pub data: Chunk,
    /// Out-of-band buffers, in the order `pickle.loads` takes them.
    pub buffers: Vec<Buffer>,
}

/// Whether `obj` is a value of a built-in scalar type (or a short tuple or
/// list of them, `depth` levels down), which pickles without buffers.
fn plain(obj: &Bound<'_, PyAny>, depth: u32) -> bool {
    if obj.is_none()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyBool>()
        || obj.is_exact_instance_of::<PyBytes>()
    {
        return true;
    }
    if depth == 0 {
        return false;
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return t.len() <= 16 && t.iter().all(|x| plain(&x, depth - 1));
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        return l.len() <= 16 && l.iter().all(|x| plain(&x, depth - 1));
    }
    false
}

static PICKLE_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static PICKLE_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl Pickle {
    /// Total bytes (pickle and buffers).
    pub fn len(&self) -> usize {
        self.data.as_slice().len()
            + self
                .buffers
                .iter()
                .map(|b| b.data.as_slice().len())
                .sum::<usize>()
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `pickle.dumps(obj, protocol=5, buffer_callback=...)`, its
    /// `PickleBuffer`s out-of-band; a large `bytes` or `bytearray` as itself.
    pub fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<Pickle> {
        let py = obj.py();
        if let Ok(b) = obj.cast_exact::<PyBytes>()
            && b.as_bytes().len() >= OOB_MIN
        {
            return Ok(Pickle {
                form: Form::Raw,
                data: Chunk::Owned(Vec::new()),
                buffers: vec![Buffer {
                    readonly: true,
                    data: Chunk::Py(PyBytesRef::new(b.clone())),
                }],
            });
        }
        if let Ok(b) = obj.cast_exact::<PyByteArray>()
            && b.len() >= OOB_MIN
        {
            return Ok(Pickle {
                form: Form::Raw,
                data: Chunk::Owned(Vec::new()),
                buffers: vec![Buffer {
                    readonly: false,
                    // A copy: a bytearray may change after it was sent.
                    data: Chunk::Owned(b.to_vec()),
                }],
            });
        }
        if let Some(p) = Self::scalar(obj) {
            return Ok(p);
        }
        let dumps = PICKLE_DUMPS.import(py, "pickle", "dumps")?;
        if plain(obj, 1) {
            // Nothing in it can be a PickleBuffer: no callback to collect
            // them (saves a list, a bound method and a keyword dict per item).
            let data = dumps.call1((obj, 5))?;
            return Ok(Pickle {
                form: Form::Pickle,
                data: Chunk::Owned(data.cast::<PyBytes>()?.as_bytes().to_vec()),
                buffers: Vec::new(),
            });
        }
        let collected = PyList::empty(py);
        let kwargs = PyDict::new(py);
        kwargs.set_item(
            pyo3::intern!(py, "buffer_callback"),
            collected.getattr("append")?,
        )?;
        let data = dumps.call((obj, 5), Some(&kwargs))?;
        let data = data.cast::<PyBytes>()?;
        let mut buffers = Vec::with_capacity(collected.len());
        for pb in collected.iter() {
            // A contiguous view of the buffer's bytes (as pickle itself does).
            let raw = pb.call_method0(pyo3::intern!(py, "raw"))?;
            let readonly: bool = raw.getattr(pyo3::intern!(py, "readonly"))?.extract()?;
            let base = raw.getattr(pyo3::intern!(py, "obj"))?;
            let nbytes: usize = raw.getattr(pyo3::intern!(py, "nbytes"))?.extract()?;
            // The exporting `bytes` object itself when the view is all of it;
            // otherwise one copy.
            let bytes = match base.cast_exact::<PyBytes>() {
                Ok(b) if b.as_bytes().len() == nbytes => b.clone(),
                _ => raw
                    .call_method0(pyo3::intern!(py, "tobytes"))?
                    .cast_into::<PyBytes>()?,
            };
            buffers.push(Buffer {
                readonly,
                data: Chunk::Py(PyBytesRef::new(bytes)),
            });
        }
        Ok(Pickle {
            form: Form::Pickle,
            data: Chunk::Owned(data.as_bytes().to_vec()),
            buffers,
        })
    }

    /// An exact `int` (within 64 bits), `str` (UTF-8 encodable) or `float`
    /// in its own form; anything else (subclasses included) is pickled.
    fn scalar(obj: &Bound<'_, PyAny>) -> Option<Pickle> {
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            return Self::tuple(t);
        }
        let (form, data) = if obj.is_exact_instance_of::<PyInt>() {
            (Form::Int, obj.extract::<i64>().ok()?.to_le_bytes().to_vec())
        } else if let Ok(s) = obj.cast_exact::<PyString>() {
            (Form::Str, s.to_cow().ok()?.as_bytes().to_vec())
        } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
            (Form::Float, f.value().to_le_bytes().to_vec())
        } else {
            return None;
        };
        Some(Pickle {
            form,
            data: Chunk::Owned(data),
            buffers: Vec::new(),
        })
    }

    /// A short tuple of scalars in [`Form::Tuple`] (`None` for any other
    /// tuple: it is pickled).
    fn tuple(t: &Bound<'_, PyTuple>) -> Option<Pickle> {
        let n = t.len();
        if n == 0 || n > TUPLE_MAX {
            return None;
        }
        let mut data = Vec::with_capacity(n * 9);
        for x in t.iter() {
            if x.is_exact_instance_of::<PyInt>() {
                data.push(Form::Int.tag());
                data.extend_from_slice(&x.extract::<i64>().ok()?.to_le_bytes());
            } else if let Ok(s) = x.cast_exact::<PyString>() {
                let cow = s.to_cow().ok()?;
                let b = cow.as_bytes();
                data.push(Form::Str.tag());
                data.extend_from_slice(&u32::try_from(b.len()).ok()?.to_le_bytes());
                data.extend_from_slice(b);
            } else if let Ok(f) = x.cast_exact::<PyFloat>() {
                data.push(Form::Float.tag());
                data.extend_from_slice(&f.value().to_le_bytes());
            } else {
                return None;
            }
        }
        Some(Pickle {
            form: Form::Tuple,
            data: Chunk::Owned(data),
            buffers: Vec::new(),
        })
    }

    /// The tuple of a [`Form::Tuple`] value.
    fn load_tuple<'py>(py: Python<'py>, mut d: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let corrupt = || PyValueError::new_err("corrupt tuple value");
        let eight = |r: &[u8]| -> PyResult<[u8; 8]> {
            r.get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt)
        };
        let mut items: Vec<Bound<'py, PyAny>> = Vec::with_capacity(TUPLE_MAX);
        while let Some((&tag, rest)) = d.split_first() {
            if items.len() == TUPLE_MAX {
                return Err(corrupt());
            }
            d = match Form::from_tag(tag) {
                Some(Form::Int) => {
                    let v = i64::from_le_bytes(eight(rest)?);
                    items.push(v.into_pyobject(py)?.into_any());
                    &rest[8..]
                }
                Some(Form::Float) => {
                    items.push(PyFloat::new(py, f64::from_le_bytes(eight(rest)?)).into_any());
                    &rest[8..]
                }
                Some(Form::Str) => {
                    let len: [u8; 4] = rest
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(corrupt)?;
                    let end = 4 + u32::from_le_bytes(len) as usize;
                    let body = rest.get(4..end).ok_or_else(corrupt)?;
                    let s = std::str::from_utf8(body)
                        .map_err(|e| PyValueError::new_err(format!("corrupt str value: {e}")))?;
                    items.push(PyString::new(py, s).into_any());
                    &rest[end..]
                }
                _ => return Err(corrupt()),
            };
        }
        if items.is_empty() {
            return Err(corrupt());
        }
        Ok(PyTuple::new(py, items)?.into_any())
    }

    /// The object: `pickle.loads(data, buffers=...)`, the `bytes` object, or
    /// the scalar.
    pub fn loads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let eight = |d: &[u8]| -> PyResult<[u8; 8]> {
            d.try_into()
                .map_err(|_| PyValueError::new_err("corrupt value: expected 8 bytes"))
        };
        match self.form {
            Form::Pickle | Form::Raw => {}
            Form::Int => {
                let v = i64::from_le_bytes(eight(self.data.as_slice())?);
                return Ok(v.into_pyobject(py)?.into_any());
            }
            Form::Str => {
                let s = std::str::from_utf8(self.data.as_slice())
                    .map_err(|e| PyValueError::new_err(format!("corrupt str value: {e}")))?;
                return Ok(PyString::new(py, s).into_any());
            }
            Form::Float => {
                let v = f64::from_le_bytes(eight(self.data.as_slice())?);
                return Ok(PyFloat::new(py, v).into_any());
            }
            Form::Tuple => return Self::load_tuple(py, self.data.as_slice()),
        }
        if self.form == Form::Raw {
            return Ok(match self.buffers.first() {
                Some(b) if !b.readonly => PyByteArray::new(py, b.data.as_slice()).into_any(),
                Some(b) => PyBytes::new(py, b.data.as_slice()).into_any(),
                None => PyBytes::new(py, &[]).into_any(),
            });
        }
        let loads = PICKLE_LOADS.import(py, "pickle", "loads")?;
        let data = PyBytes::new(py, self.data.as_slice());
        if self.buffers.is_empty() {
            return loads.call1((data,));
        }
        let bufs = PyList::empty(py);
        for b in &self.buffers {
            if b.readonly {
                bufs.append(PyBytes::new(py, b.data.as_slice()))?;
            } else {
                bufs.append(PyByteArray::new(py, b.data.as_slice()))?;
            }
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "buffers"), bufs)?;
        loads.call((data,), Some(&kwargs))
    }

    /// Writes this pickle as a value of the wire format:
    /// `(form, data, [(readonly, buffer), ...])`.
    pub fn serialize_into<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Bytes<'a>(&'a [u8]);
        impl serde::Serialize for Bytes<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        struct Bufs<'a>(&'a [Buffer]);
        impl serde::Serialize for Bufs<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(
                    self.0
                        .iter()
                        .map(|b| (b.readonly, Bytes(b.data.as_slice()))),
                )
            }
        }
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.form.tag())?;
        t.serialize_element(&Bytes(self.data.as_slice()))?;
        t.serialize_element(&Bufs(&self.buffers))?;
        t.end()
    }
}

/// Bytes read from the wire.
struct OwnedBytes(Vec<u8>);

impl<'de> serde::Deserialize<'de> for OwnedBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V).map(OwnedBytes)
    }
}

impl<'de> serde::Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pickle;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pickle with its out-of-band buffers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pickle, A::Error> {
                let missing = |i| de::Error::invalid_length(i, &"3 fields");
                let tag: u8 = seq.next_element()?.ok_or_else(|| missing(0))?;
                let form = Form::from_tag(tag)
                    .ok_or_else(|| de::Error::custom(format!("unknown value form {tag}")))?;
                let data: OwnedBytes = seq.next_element()?.ok_or_else(|| missing(1))?;
                let bufs: Vec<(bool, OwnedBytes)> =
                    seq.next_element()?.ok_or_else(|| missing(2))?;
                if form == Form::Raw && bufs.len() != 1 {
                    return Err(de::Error::custom("a raw value has exactly one buffer"));
                }
                Ok(Pickle {
                    form,
                    data: Chunk::Owned(data.0),
                    buffers: bufs
                        .into_iter()
                        .map(|(readonly, b)| Buffer {
                            readonly,
                            data: Chunk::Owned(b.0),
                        })
                        .collect(),
                })
            }
        }
        d.deserialize_tuple(3, V)
            .map(|p| PyValue::Pickled(Arc::new(p)))
    }
}

/// `(form, data_len, [(readonly, buffer_len), ...])`.
pub type Layout = (&'static str, usize, Vec<(bool, usize)>);

/// How `obj` would cross a process boundary, for tests: see [`Layout`].
#[pyfunction]
pub fn _pickle_layout(obj: &Bound<'_, PyAny>) -> PyResult<Layout> {
    let p = Pickle::dumps(obj)?;
    Ok((
        p.form.name(),
        p.data.as_slice().len(),
        p.buffers
            .iter()
            .map(|b| (b.readonly, b.data.as_slice().len()))
            .collect(),
    ))
}
