//! A Rust worker for an mpserver flow: `fingerprint(data)` hashes a bytes
//! object many times over (standing for real work: parsing, feature
//! extraction, a native model). It releases the GIL while it works, so a
//! `ThreadServlet` with N threads runs N of them in parallel on N CPUs, with
//! no pickling and no process hop, beside Python workers in the same flow.

use pyo3::prelude::*;

/// FNV-1a over `data`, `rounds` times (each round seeded by the last).
fn fingerprint_of(data: &[u8], rounds: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..rounds {
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `fingerprint(data: bytes, rounds: int = 1) -> int`, without the GIL.
#[pyfunction]
#[pyo3(signature = (data, rounds = 1))]
fn fingerprint(py: Python<'_>, data: Vec<u8>, rounds: u32) -> u64 {
    py.detach(|| fingerprint_of(&data, rounds))
}

#[pymodule]
fn rust_worker_example(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fingerprint, m)?)?;
    Ok(())
}
