#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod app;
mod config;
mod conn;
mod error;
mod json;
mod ndjson;
mod observe;
mod routes;
mod serve;

pub use config::{ConfigError, ENV_VARS, HttpConfig};
pub use error::{ErrorBody, ErrorResponse, ServeError, status_of};
pub use routes::{TIMEOUT_HEADER, TIMEOUT_PARAM};
pub use serve::{Flow, router, router_with, serve, serve_with_shutdown};
