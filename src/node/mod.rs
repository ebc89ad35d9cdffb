//! This machine: its identity keys, hardware fingerprint, enrollment and trusted time.
//!
//! The node directory holds the node's secrets (`node.key`, `unwrap.key`, mode 0600),
//! their public halves, and `state.json` (the signed trusted-time record). Nothing in
//! this module ever sees model plaintext.

pub mod clock;
pub mod enrollment;
pub mod hardware;
pub mod identity;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod trusted_time;

pub use identity::{NodeIdentity, NodePublic};

/// The TPM to use, chosen as tpm2-tools choose it: `explicit` (a `--tcti` option), else
/// the `TCTI` environment variable, else `device:/dev/tpmrm0`. Without the `tpm`
/// feature, the same choice (so errors can name it).
pub fn tpm_tcti(explicit: Option<&str>) -> String {
    #[cfg(feature = "tpm")]
    {
        tpm::select_tcti(explicit)
    }
    #[cfg(not(feature = "tpm"))]
    {
        explicit
            .map(str::to_string)
            .or_else(|| std::env::var("TCTI").ok())
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "device:/dev/tpmrm0".into())
    }
}
