//! leasehold: a time-limited, hardware-bound license runtime for sealed LLM weights.
//!
//! The crate is laid out by concept, so a newcomer finds each one by its name:
//!
//! - [`crypto`]: primitives behind small seams: the one place that signs and verifies
//!   Ed25519 signatures, HPKE key wrapping, randomness, key files.
//! - [`format`]: the signed-document envelope shared by licenses, issuer certificates,
//!   enrollments and node state; strict parsing and canonical bytes.
//! - [`seal`]: the sealed model container (STREAM over AES-256-GCM segments).
//! - [`license`]: license and issuer-certificate bodies, issuing, verification and verdicts.
//! - [`node`]: this machine: identity keys, hardware fingerprint, enrollment, trusted time.
//! - [`cli`]: the `leasehold` command line; thin, over the modules above.
//!
//! `unsafe` is confined to [`sys`], one small module with a `// SAFETY:` line per block.
#![deny(unsafe_code)]

pub mod cli;
pub mod crypto;
pub mod format;
pub mod fsutil;
pub mod fuzzing;
pub mod license;
pub mod node;
pub mod runtime;
pub mod seal;
pub mod server;
pub mod sys;
