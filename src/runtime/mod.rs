//! The runtime: everything between a verified license and tokens leaving the node.
//!
//! - [`weights`]: decrypted weights in an anonymous memfd, and their wipe.
//! - [`engine`]: the one thread that owns llama.cpp (model, context, batching).
//! - [`lifecycle`]: the license state machine (serving, grace, lapsed) on the
//!   monotonic clock, renewal without restart.
//! - [`text`]: UTF-8 and stop-sequence handling of generated text.
//!
//! The runtime never writes plaintext weights to storage.

pub mod admission;
pub mod engine;
pub mod lifecycle;
pub mod text;
pub mod weights;
