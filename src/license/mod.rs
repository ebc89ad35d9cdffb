//! Licenses and issuer certificates: their bodies, how they are issued, and the one
//! verification path that turns a license file into a [`Verdict`] for this machine now.
//!
//! Trust flows from the roots compiled into the binary ([`roots`]): a license is signed
//! by a root, or by an issuer whose certificate (carried in the license) a root signed.

pub mod body;
pub mod issue;
pub mod issuer;
pub mod roots;
pub mod verify;

pub use body::{Caps, FilterRules, LicenseBody, WatermarkMandate};
pub use issuer::IssuerCertBody;
pub use roots::TrustRoots;
pub use verify::{assess, Assessment, Authority, Checks, Verdict, VerifiedLicense};

/// Features a license may mandate that this build implements. A license mandating a
/// feature not listed here is refused: the node cannot honour it.
pub const KNOWN_FEATURES: &[&str] = &[
    FEATURE_WATERMARK,
    FEATURE_WATERMARK_TOURNAMENT,
    FEATURE_OUTPUT_FILTER,
];

/// The features listed from a license's safeguard terms, never on their own.
pub const SAFEGUARD_FEATURES: &[&str] = KNOWN_FEATURES;

/// The feature name of a mandated watermark (the license's `watermark` field).
pub const FEATURE_WATERMARK: &str = "watermark";
/// Listed beside `watermark` when its scheme is the tournament: a build that predates
/// the scheme refuses the license as unsupported instead of misreading it.
pub const FEATURE_WATERMARK_TOURNAMENT: &str = "watermark-tournament";
/// The feature name of a mandated output filter (the license's `output_filter` field).
pub const FEATURE_OUTPUT_FILTER: &str = "output-filter";

/// Largest license file accepted.
pub const MAX_LICENSE_BYTES: u64 = crate::format::envelope::MAX_DOCUMENT_BYTES;
