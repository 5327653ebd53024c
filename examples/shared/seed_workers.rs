//! The workers of the seed documentation's flow, with Python's semantics on
//! dynamic values (`serde_json::Value`): `GetHead` (`x[0]`), `GetTail`
//! (`x[-1]`), `GetLen` (`len(x)`), each sleeping as in the seed, `combine`
//! (`(x[0] + x[1]) * x[2]`) and `Solute` (`f"Hello, {x}!"`).
//!
//! Errors that come from the input (Python's `TypeError`, `IndexError`,
//! `KeyError`, and a result over the size limit) are marked as invalid input
//! ([`WorkerError::invalid_input`]), so a server answers them as the
//! client's fault (HTTP 422), not as its own failure.
//!
//! Integers are exact, as Python's: sums and products are computed in 128
//! bits (JSON integers have at most 64, and the multiplier is a length, so
//! nothing reachable overflows); a result beyond 64 bits travels to `Solute`
//! as its decimal digits, so the greeting is exactly Python's. The combine
//! step refuses (as invalid input) a result larger than its byte limit
//! instead of trying to allocate it: it runs in a thread of the server
//! process, and an allocation failure there would abort the whole server.
//!
//! One definition, included by `examples/seed.rs`, the `seed_http` binary and
//! the benchmark's seed scenarios (`#[path]` module; this folder has no
//! `main.rs`, so it is not an example of its own).

use std::thread::sleep;
use std::time::Duration;

use mpserver::{Worker, WorkerError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The largest result `combine` makes by default (16 MiB of JSON).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// Python's name for the type of a JSON value.
fn py_type(x: &Value) -> &'static str {
    match x {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

fn type_error(message: String) -> WorkerError {
    WorkerError::invalid_input("TypeError", message)
}

/// `x[i]` for `i = 0` (`first`) or `i = -1`, with Python's errors.
fn index(x: &Value, first: bool) -> Result<Value, WorkerError> {
    let what = if first { 0 } else { -1 };
    let got = match x {
        Value::String(s) => {
            let c = if first {
                s.chars().next()
            } else {
                s.chars().last()
            };
            c.map(|c| json!(c.to_string()))
        }
        Value::Array(a) => if first { a.first() } else { a.last() }.cloned(),
        Value::Object(_) => {
            return Err(WorkerError::invalid_input("KeyError", what.to_string()));
        }
        other => {
            return Err(type_error(format!(
                "'{}' object is not subscriptable",
                py_type(other)
            )));
        }
    };
    got.ok_or_else(|| {
        WorkerError::invalid_input("IndexError", format!("{} index out of range", py_type(x)))
    })
}

/// `x[0]` of a string or a list.
pub fn head(x: &Value) -> Result<Value, WorkerError> {
    index(x, true)
}

/// `x[-1]` of a string or a list.
pub fn tail(x: &Value) -> Result<Value, WorkerError> {
    index(x, false)
}

/// `len(x)` of a string, a list or a dict.
pub fn len(x: &Value) -> Result<Value, WorkerError> {
    match x {
        Value::String(s) => Ok(json!(s.chars().count())),
        Value::Array(a) => Ok(json!(a.len())),
        Value::Object(o) => Ok(json!(o.len())),
        other => Err(type_error(format!(
            "object of type '{}' has no len()",
            py_type(other)
        ))),
    }
}

#[derive(Serialize, Deserialize)]
pub struct GetHead;
#[derive(Serialize, Deserialize)]
pub struct GetTail;
#[derive(Serialize, Deserialize)]
pub struct GetLen;
#[derive(Serialize, Deserialize)]
pub struct Solute;

impl Worker for GetHead {
    type Input = Value;
    type Output = Value;
    fn call(&mut self, x: Value) -> Result<Value, WorkerError> {
        sleep(Duration::from_millis(10));
        head(&x)
    }
}

impl Worker for GetTail {
    type Input = Value;
    type Output = Value;
    fn call(&mut self, x: Value) -> Result<Value, WorkerError> {
        sleep(Duration::from_millis(11));
        tail(&x)
    }
}

impl Worker for GetLen {
    type Input = Value;
    type Output = Value;
    fn call(&mut self, x: Value) -> Result<Value, WorkerError> {
        sleep(Duration::from_millis(12));
        len(&x)
    }
}

impl Worker for Solute {
    type Input = Value;
    type Output = Value;
    fn call(&mut self, x: Value) -> Result<Value, WorkerError> {
        let shown = match &x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(json!(format!("Hello, {shown}!")))
    }
}

/// A number as Python sees it: an exact integer or a float.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn num(x: &Value) -> Option<Num> {
    match x {
        // Python's bool is an int.
        Value::Bool(b) => Some(Num::Int(i128::from(*b))),
        Value::Number(n) => Some(if let Some(i) = n.as_i64() {
            Num::Int(i128::from(i))
        } else if let Some(u) = n.as_u64() {
            Num::Int(i128::from(u))
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        _ => None,
    }
}

fn as_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// An exact integer as JSON: a number when it fits 64 bits, else its
/// decimal digits (only `Solute` reads it, and prints it the same way).
fn int_value(i: i128) -> Value {
    if let Ok(v) = i64::try_from(i) {
        json!(v)
    } else if let Ok(v) = u64::try_from(i) {
        json!(v)
    } else {
        Value::String(i.to_string())
    }
}

fn float_value(f: f64) -> Result<Value, WorkerError> {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| {
            WorkerError::invalid_input("OverflowError", format!("{f} is not a finite number"))
        })
}

fn too_large(bytes: u128, limit: usize) -> WorkerError {
    WorkerError::invalid_input(
        "ValueError",
        format!("the result would take {bytes} bytes, over the limit of {limit} bytes"),
    )
}

/// `(x[0] + x[1]) * x[2]` with Python's semantics on numbers, strings and
/// lists; a result larger than `max_output_bytes` (as JSON) is refused with
/// an invalid-input error before anything is allocated.
pub fn combine_bounded(x: Vec<Value>, max_output_bytes: usize) -> Result<Value, WorkerError> {
    let operands = |x: &[Value]| {
        x.iter()
            .map(|v| format!("'{}'", py_type(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let [a, b, n] = x.as_slice() else {
        return Err(type_error(format!(
            "expected 3 values, got {} ({})",
            x.len(),
            operands(&x)
        )));
    };
    let unsupported = |op: &str, l: &Value, r: &Value| {
        type_error(format!(
            "unsupported operand type(s) for {op}: '{}' and '{}'",
            py_type(l),
            py_type(r)
        ))
    };
    // x[0] + x[1]
    enum Sum<'a> {
        Num(Num),
        Str(String),
        List(Vec<&'a Value>),
    }
    let sum = match (a, b) {
        (Value::String(a), Value::String(b)) => {
            let bytes = a.len() as u128 + b.len() as u128;
            if bytes > max_output_bytes as u128 {
                return Err(too_large(bytes, max_output_bytes));
            }
            Sum::Str(format!("{a}{b}"))
        }
        (Value::Array(a), Value::Array(b)) => Sum::List(a.iter().chain(b).collect()),
        _ => match (num(a), num(b)) {
            (Some(Num::Int(a)), Some(Num::Int(b))) => Sum::Num(Num::Int(a + b)),
            (Some(a), Some(b)) => Sum::Num(Num::Float(as_f64(a) + as_f64(b))),
            _ => return Err(unsupported("+", a, b)),
        },
    };
    // ... * x[2]
    let times = |count: i128| -> u128 { count.max(0) as u128 };
    match (sum, num(n)) {
        (Sum::Num(Num::Int(s)), Some(Num::Int(k))) => match s.checked_mul(k) {
            Some(v) => Ok(int_value(v)),
            None => Err(WorkerError::invalid_input(
                "OverflowError",
                "integer result beyond 128 bits",
            )),
        },
        (Sum::Num(s), Some(k)) => float_value(as_f64(s) * as_f64(k)),
        (Sum::Str(s), Some(Num::Int(k))) => {
            let bytes = s.len() as u128 * times(k);
            if bytes > max_output_bytes as u128 {
                return Err(too_large(bytes, max_output_bytes));
            }
            Ok(json!(s.repeat(times(k) as usize)))
        }
        (Sum::List(items), Some(Num::Int(k))) => {
            // Size as JSON: the items and their commas, `k` times.
            let mut one: u128 = 0;
            for v in &items {
                one += serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0) as u128 + 1;
                if one > max_output_bytes as u128 {
                    break;
                }
            }
            let bytes = (one * times(k)).saturating_add(2);
            if bytes > max_output_bytes as u128 {
                return Err(too_large(bytes, max_output_bytes));
            }
            let k = times(k) as usize;
            let mut out = Vec::with_capacity(items.len() * k);
            for _ in 0..k {
                out.extend(items.iter().map(|v| (*v).clone()));
            }
            Ok(Value::Array(out))
        }
        (Sum::Str(_), _) => Err(type_error(format!(
            "can't multiply sequence by non-int of type '{}'",
            py_type(n)
        ))),
        (Sum::List(_), _) => Err(type_error(format!(
            "can't multiply sequence by non-int of type '{}'",
            py_type(n)
        ))),
        (Sum::Num(_), None) => Err(type_error(format!(
            "unsupported operand type(s) for *: 'int' and '{}'",
            py_type(n)
        ))),
    }
}

/// [`combine_bounded`] with [`DEFAULT_MAX_OUTPUT_BYTES`].
pub fn combine(x: Vec<Value>) -> Result<Value, WorkerError> {
    combine_bounded(x, DEFAULT_MAX_OUTPUT_BYTES)
}
