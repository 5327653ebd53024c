//! Long-form documentation: [the guide](guide) (every topic in depth, from a
//! first example to running in production) and [the migration
//! table](migration) from Python's `mpservice.mpserver`.
//!
//! Both pages are the repository's `docs/guide.md` and `docs/migration.md`;
//! their Rust blocks are doc-tests of this crate, so what they show runs.

#[doc = include_str!("../docs/guide.md")]
pub mod guide {}

#[doc = include_str!("../docs/migration.md")]
pub mod migration {}
