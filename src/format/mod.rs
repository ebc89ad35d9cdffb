//! Wire formats shared by every signed document, and the text forms of times and
//! durations on the command line.
//!
//! Parsing lives here, separate from the cryptography that checks what was parsed.

pub mod encoding;
pub mod envelope;
pub mod time;

pub use envelope::{Body, BodyError, DocumentKind, Envelope, EnvelopeError};
