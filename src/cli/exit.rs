//! Exit codes: one per outcome a script may want to tell apart. Documented in
//! `leasehold --help`, `leasehold inspect --help` and the README.

use crate::license::Verdict;
use crate::node::trusted_time::StateError;
use crate::runtime::admission::Refusal;
use crate::seal::SealError;

pub const OK: u8 = 0;
/// Bad input, unreadable or unwritable file, refused operation; the message says which.
pub const ERROR: u8 = 1;
/// Command-line usage error (clap).
pub const USAGE: u8 = 2;
pub const IN_GRACE: u8 = 10;
pub const NOT_YET_VALID: u8 = 11;
pub const EXPIRED: u8 = 12;
pub const CLOCK_ROLLED_BACK: u8 = 13;
pub const WRONG_MACHINE: u8 = 14;
pub const TAMPERED: u8 = 15;
pub const UNKNOWN_ISSUER: u8 = 16;
pub const ISSUER_NOT_AUTHORIZED: u8 = 17;
pub const UNSUPPORTED: u8 = 18;
/// This node already admitted a later serial of the license.
pub const SUPERSEDED: u8 = 19;
/// The sealed model is damaged: truncated, extended, edited or reordered.
pub const SEALED_DAMAGED: u8 = 20;
/// The sealed model or content key is not the one the license is for.
pub const MODEL_MISMATCH: u8 = 21;
/// The license server refused a license (revoked, ended, denied, unknown node), or an
/// audit answer (`admin audit import`).
pub const SERVER_REFUSED: u8 = 22;
/// A usage ledger failed verification (`audit verify`).
pub const LEDGER_DAMAGED: u8 = 23;
/// `watermark detect` found no watermark in the text.
pub const NO_WATERMARK: u8 = 24;
/// A llama.cpp library or CPU-kernel module is not the one this build made, or none of
/// the modules runs on this CPU.
pub const NATIVE_REFUSED: u8 = 25;

/// The exit-code table, as printed in `--help`.
pub const TABLE: &str = "\
Exit codes:
   0  success; for inspect and check: the license is valid on this machine now
   1  error: bad input, unreadable or unwritable file (the message says which)
   2  usage error: unknown flag, missing argument, or flags that do not go together
  10  in grace: expired, still serving until the grace period ends (inspect)
  11  not yet valid
  12  expired (grace period over), or this node saw the license lapse (spent)
  13  clock rolled back: the system clock is behind time this node has seen;
      or the node's trusted-time state (state.json) is missing or damaged, or
      (TPM nodes) older than the TPM's counter: a restored backup or snapshot
  14  wrong machine: issued to another node, or the hardware does not match, or
      the node's TPM keys do not load on this TPM (copied node directory, cleared TPM)
  15  tampered: the license is damaged, edited, or not a license
  16  unknown issuer: not signed by a root trusted by this build
  17  issuer not authorized: a certified issuer acted outside its scope
  18  unsupported: a format version or mandated feature this build lacks
  19  superseded: this node already admitted a later serial of this license
  20  sealed model damaged: truncated, extended, edited or reordered (check)
  21  model mismatch: the sealed model or key is not the one licensed (check)
  22  refused by the license server: revoked (also remembered by the node), ended,
      denied, or not enrolled; an audit answer refused (admin audit import)
  23  usage ledger damaged: edited, deleted, reordered, truncated or forked (audit verify,
      audit export); for serve: the ledger is damaged, deleted or rolled back
  24  no watermark: the text does not carry the license's watermark (watermark detect)
  25  installation refused: a llama.cpp library or CPU-kernel module is not the file
      this build made (modified, replaced or added), or none runs on this CPU";

/// The exit code of a verdict.
pub fn for_verdict(verdict: &Verdict) -> u8 {
    match verdict {
        Verdict::Valid { .. } => OK,
        Verdict::InGrace { .. } => IN_GRACE,
        Verdict::NotYetValid { .. } => NOT_YET_VALID,
        Verdict::Expired { .. } | Verdict::Spent { .. } => EXPIRED,
        Verdict::ClockRolledBack { .. } | Verdict::TrustedTimeLost { .. } => CLOCK_ROLLED_BACK,
        Verdict::Superseded { .. } => SUPERSEDED,
        Verdict::Revoked { .. } => SERVER_REFUSED,
        Verdict::WrongMachine { .. } => WRONG_MACHINE,
        Verdict::Tampered { .. } => TAMPERED,
        Verdict::UnknownIssuer { .. } => UNKNOWN_ISSUER,
        Verdict::IssuerNotAuthorized { .. } => ISSUER_NOT_AUTHORIZED,
        Verdict::Unsupported { .. } => UNSUPPORTED,
    }
}

/// The exit code of an error no step turned into a verdict: a node directory whose TPM
/// keys do not load on this TPM is the wrong machine (14); a node state that is missing,
/// damaged or rolled back is 13; anything else is 1.
pub fn for_error(error: &anyhow::Error) -> u8 {
    if let Some(crate::node::identity::IdentityError::TpmNotThisMachine(_)) =
        error.downcast_ref::<crate::node::identity::IdentityError>()
    {
        return WRONG_MACHINE;
    }
    match error.downcast_ref::<StateError>() {
        Some(StateError::Fs(_) | StateError::Tpm(_)) | None => ERROR,
        Some(_) => CLOCK_ROLLED_BACK,
    }
}

/// The exit code of a sealed-model error.
pub fn for_seal_error(error: &SealError) -> u8 {
    match error {
        SealError::WrongKey { .. } => MODEL_MISMATCH,
        SealError::Fs(_) | SealError::NotGguf { .. } | SealError::InvalidModelId(_) => ERROR,
        _ => SEALED_DAMAGED,
    }
}

/// The exit code of a refused admission.
pub fn for_refusal(refusal: &Refusal) -> u8 {
    match refusal {
        Refusal::Verdict { verdict, .. } => for_verdict(verdict),
        Refusal::Sealed(e) => for_seal_error(e),
        Refusal::ModelMismatch(_) => MODEL_MISMATCH,
        Refusal::Unwrap(_) => WRONG_MACHINE,
        Refusal::KeyDevice(_) => ERROR,
        Refusal::Safeguards(_) => UNSUPPORTED,
        Refusal::State(StateError::Fs(_) | StateError::Tpm(_)) | Refusal::Fs(_) => ERROR,
        Refusal::State(_) => CLOCK_ROLLED_BACK,
    }
}
