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

/// The TPM a command without a node directory looks at, when one is there: the `TCTI`
/// environment variable when set, else `/dev/tpmrm0` when it exists.
pub fn tpm_if_present() -> Option<String> {
    let named = std::env::var("TCTI").is_ok_and(|t| !t.trim().is_empty());
    (named || std::path::Path::new("/dev/tpmrm0").exists()).then(|| tpm_tcti(None))
}
