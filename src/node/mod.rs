//! This machine: its identity keys, hardware fingerprint, enrollment and trusted time.
//!
//! The node directory holds the node's secrets (`node.key`, `unwrap.key`, mode 0600),
//! their public halves, and `state.json` (the signed trusted-time record). Nothing in
//! this module ever sees model plaintext.

pub mod clock;
pub mod enrollment;
pub mod hardware;
pub mod identity;
pub mod trusted_time;

pub use identity::{NodeIdentity, NodePublic};
