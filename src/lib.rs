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
//! - [`runtime`]: the node at work: admission, memory-only weights, the llama.cpp
//!   engine, the license lifecycle (serving, grace, lapse) and automatic renewal.
//! - [`server`]: the node's OpenAI-compatible HTTP API.
//! - [`ledger`]: the node's usage ledger: hash-chained records, signed checkpoints.
//! - [`protocol`]: signed renewal requests and responses between nodes and servers.
//! - [`license_server`]: the vendor's license server: enrollments, approvals, short
//!   leases, revocation, usage checkpoints, on SQLite or PostgreSQL.
//! - [`http_auth`]: bearer tokens for the node's API and the license server (one
//!   reader, one constant-time comparison).
//! - [`metrics`]: Prometheus text exposition for the node's and the server's `/metrics`.
//! - [`watermark`]: the statistical text watermark's arithmetic (green lists, logit
//!   bias, detection); licenses mandate it and the engine applies it
//!   (`runtime::safeguards`).
//! - [`cli`]: the `leasehold` command line; thin, over the modules above.
//!
//! `unsafe` is confined to [`sys`], one small module with a `// SAFETY:` line per block.
#![deny(unsafe_code)]

pub mod cli;
pub mod crypto;
pub mod format;
pub mod fsutil;
pub mod fuzzing;
pub mod http_auth;
pub mod ledger;
pub mod license;
pub mod license_server;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod runtime;
pub mod seal;
#[cfg(feature = "inference")]
pub mod server;
pub mod sys;
pub mod watermark;
