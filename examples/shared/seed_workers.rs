//! The workers of the seed documentation's flow, with Python's semantics on
//! dynamic values (`serde_json::Value`): `GetHead` (`x[0]`), `GetTail`
//! (`x[-1]`), `GetLen` (`len(x)`), each sleeping as in the seed, `combine`
//! (`(x[0] + x[1]) * x[2]`) and `Solute` (`f"Hello, {x}!"`).
//!
//! One definition, included by `examples/seed.rs`, the `seed_http` binary and
//! the benchmark's seed scenarios (`#[path]` module; this folder has no
//! `main.rs`, so it is not an example of its own).

use std::thread::sleep;
use std::time::Duration;

use mpserver::{Worker, WorkerError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `x[0]` of a string or a list.
pub fn head(x: &Value) -> Result<Value, WorkerError> {
    match x {
        Value::String(s) => s.chars().next().map(|c| json!(c.to_string())),
        Value::Array(a) => a.first().cloned(),
        _ => None,
    }
    .ok_or_else(|| WorkerError::new("IndexError", format!("no first element in {x}")))
}

/// `x[-1]` of a string or a list.
pub fn tail(x: &Value) -> Result<Value, WorkerError> {
    match x {
        Value::String(s) => s.chars().last().map(|c| json!(c.to_string())),
        Value::Array(a) => a.last().cloned(),
        _ => None,
    }
    .ok_or_else(|| WorkerError::new("IndexError", format!("no last element in {x}")))
}

/// `len(x)` of a string or a list.
pub fn len(x: &Value) -> Result<Value, WorkerError> {
    match x {
        Value::String(s) => Ok(json!(s.chars().count())),
        Value::Array(a) => Ok(json!(a.len())),
        _ => Err(WorkerError::new(
            "TypeError",
            format!("object {x} has no len()"),
        )),
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

/// Python's `(x[0] + x[1]) * x[2]` on dynamic values.
pub fn combine(x: Vec<Value>) -> Result<Value, WorkerError> {
    let type_error = || WorkerError::new("TypeError", format!("unsupported operands in {x:?}"));
    let [a, b, n] = x.as_slice() else {
        return Err(type_error());
    };
    let sum = match (a, b) {
        (Value::String(a), Value::String(b)) => json!(format!("{a}{b}")),
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => json!(a + b),
            _ => json!(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
        },
        _ => return Err(type_error()),
    };
    let n = n.as_i64().ok_or_else(type_error)?;
    match sum {
        Value::String(s) => Ok(json!(s.repeat(n.max(0) as usize))),
        Value::Number(v) => Ok(match v.as_i64() {
            Some(v) => json!(v * n),
            None => json!(v.as_f64().unwrap_or(0.0) * n as f64),
        }),
        _ => Err(type_error()),
    }
}
