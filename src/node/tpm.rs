//! A node unwrap key that lives in a TPM 2.0 (feature `tpm`).
//!
//! The key is a P-256 ECDH key created by the TPM itself (non-exportable: fixedTPM,
//! fixedParent, sensitiveDataOrigin) under a storage primary key (SRK) of the owner
//! hierarchy. The SRK is never persisted: it is regenerated from a fixed template (the
//! TCG's ECC P-256 SRK template) on every use, so it comes out identical for as long as
//! the TPM's storage seed is unchanged. What the node directory keeps ([`KEY_FILE`]) is
//! the key's TPM2B_PUBLIC and TPM2B_PRIVATE; the private blob is encrypted under the SRK,
//! so it loads on this TPM only, and on no TPM at all once this one has been cleared.
//!
//! Unwrapping is HPKE DHKEM(P-256, HKDF-SHA256)/HKDF-SHA256/AES-256-GCM
//! ([`crate::crypto::hpke_p256`]) split at the DH: the TPM computes the DH
//! (`TPM2_ECDH_ZGen`) on the sender's encapsulated point, and the key schedule and the
//! AEAD run here. The DH output crosses the bus inside a session salted with the SRK,
//! with parameter encryption, so it cannot be sniffed off the bus.
//!
//! The TPM is chosen as tpm2-tools choose it ([`select_tcti`]): an explicit `--tcti`
//! string, else the `TCTI` environment variable, else `device:/dev/tpmrm0`
//! (`swtpm:host=127.0.0.1,port=N` for a software TPM).
//!
//! What else a TPM node keeps here:
//! - [`seal_secret`] / [`SealedSecret::unseal`]: the node's Ed25519 signing seed as a
//!   sealed data object under the same regenerated SRK (`node.key.tpm`), crossing the
//!   bus only inside the salted session's parameter encryption.
//! - [`create_counter`] / [`NvCounter`]: a TPM_NT_COUNTER NV index (`counter.tpm`
//!   names it), the node state's rollback anchor, read together with the TPM's Clock
//!   ([`NodeCounters::read_with_clock`]). Every read and increment first checks that the
//!   index is still a counter.
//! - [`endorsement_key_sha256`]: the hash of the endorsement key's public area, the
//!   `tpm-ek` hardware component.

use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::{ek, DefaultKey};
use tss_esapi::attributes::{
    NvIndexAttributesBuilder, ObjectAttributesBuilder, SessionAttributesBuilder,
};
use tss_esapi::constants::{NvIndexType, SessionType, Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, PublicAlgorithm,
};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, Data, Digest, EccParameter, EccPoint, EccScheme, EncryptedSecret,
    KeyDerivationFunctionScheme, KeyedHashScheme, NvPublicBuilder, Private, Public, PublicBuffer,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, Sensitive,
    SensitiveBuffer, SensitiveData, SignatureScheme, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::crypto::hpke_p256::{self, Aead, OpenError, POINT_LEN};
use crate::crypto::random;
use crate::fsutil::{self, FsError, Replace};

/// The TPM used when neither `--tcti` nor `TCTI` names one: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// The node-directory file holding the TPM key's blobs.
pub const KEY_FILE: &str = "unwrap.tpm";
/// The `format` field of [`KEY_FILE`].
pub const KEY_FILE_FORMAT: &str = "leasehold TPM P-256 unwrap key v1";
/// What re-enrolling takes, named in errors.
const REENROLL: &str =
    "if this node's TPM is not the one the TCTI names, set TCTI to it; otherwise re-enroll this node (leasehold enroll --tpm) and have its licenses reissued";

/// Errors from the TPM, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error(
        "invalid TCTI {tcti:?}: expected e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321"
    )]
    InvalidTcti { tcti: String },
    #[error(
        "no TPM at {tcti}: {detail} (choose another with --tcti or the TCTI environment variable)"
    )]
    NotPresent { tcti: String, detail: String },
    #[error("cannot open the TPM at {tcti}: {detail} (the service user needs access to the device, group tss for /dev/tpmrm0)")]
    NoAccess { tcti: String, detail: String },
    #[error("the TPM at {tcti} is busy: {detail}; try again (use /dev/tpmrm0, the kernel's resource manager, rather than /dev/tpm0 when other programs use the TPM)")]
    Busy { tcti: String, detail: String },
    #[error("the TPM is in dictionary-attack lockout and refuses to use keys until it recovers (wait for the lockout interval, or have the TPM owner run tpm2_dictionarylockout --clear-lockout)")]
    Lockout,
    #[error("the node's TPM key does not load on this TPM: it was created by another machine's TPM, or this TPM has been cleared since enrollment ({detail}); {REENROLL}")]
    ReEnrollmentNeeded { detail: String },
    #[error("{path}: not a leasehold TPM key file: {detail}")]
    BadKeyFile { path: String, detail: String },
    #[error(transparent)]
    File(#[from] FsError),
    #[error("the encapsulated key is not an uncompressed P-256 point")]
    Malformed,
    #[error("the wrapped key does not open with this node's TPM key (wrapped to another node's key, or altered)")]
    NotForThisKey,
    #[error("the TPM's counter for this node (NV index {index:#010x}) is gone: the TPM was cleared or the index was deleted; {REENROLL}")]
    CounterGone { index: u32 },
    #[error("the TPM refuses the password counter.tpm holds for counter {index:#010x}: the file was edited or comes from another node; {REENROLL}")]
    CounterPassword { index: u32 },
    #[error("NV index {index:#010x} in the TPM is not a monotonic counter but an index of type {kind}, which can be written freely: the node's counter was deleted and something else defined in its place, so the node's state can no longer be checked for rollback; {REENROLL}")]
    NotACounter { index: u32, kind: String },
    #[error("the TPM's {hierarchy} hierarchy refuses the empty password ({detail}); leasehold needs it empty, as the TCG's provisioning guidance leaves it: have the TPM's owner remove it (tpm2_changeauth -c {hierarchy} -p OLD-PASSWORD)")]
    HierarchyPassword {
        hierarchy: &'static str,
        detail: String,
    },
    #[error("TPM {operation} failed: {detail}")]
    Tpm {
        operation: &'static str,
        detail: String,
    },
}

/// The TCTI to use, chosen as tpm2-tools choose it: `explicit` (a `--tcti` option), else
/// the `TCTI` environment variable, else [`DEFAULT_TCTI`]. Empty values count as unset.
pub fn select_tcti(explicit: Option<&str>) -> String {
    select_tcti_from(explicit, std::env::var("TCTI").ok().as_deref())
}

fn select_tcti_from(explicit: Option<&str>, env: Option<&str>) -> String {
    explicit
        .filter(|s| !s.trim().is_empty())
        .or(env.filter(|s| !s.trim().is_empty()))
        .unwrap_or(DEFAULT_TCTI)
        .trim()
        .to_string()
}

/// Open an ESAPI context on the TPM at `tcti` (`device:PATH`, `swtpm:host=H,port=N`,
/// `mssim:...`, `tabrmd:...`).
pub fn open_context(tcti: &str) -> Result<Context, TpmError> {
    let conf = TctiNameConf::from_str(tcti).map_err(|_| TpmError::InvalidTcti {
        tcti: tcti.to_string(),
    })?;
    let device = device_path(tcti);
    if let Some(path) = &device {
        if !Path::new(path).exists() {
            return Err(TpmError::NotPresent {
                tcti: tcti.to_string(),
                detail: format!(
                    "{path} does not exist (this machine has no TPM, or its driver is not loaded)"
                ),
            });
        }
    }
    Context::new(conf).map_err(|err| {
        // The TCTI's own code says little ("I/O error"); the device's errno says more.
        if let Some(path) = &device {
            if let Err(io) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                let detail = format!("{path}: {io}");
                // /dev/tpm0 admits one opener at a time (EBUSY); /dev/tpmrm0 many.
                return match io.kind() {
                    std::io::ErrorKind::ResourceBusy => TpmError::Busy {
                        tcti: tcti.to_string(),
                        detail,
                    },
                    std::io::ErrorKind::PermissionDenied => TpmError::NoAccess {
                        tcti: tcti.to_string(),
                        detail,
                    },
                    _ => TpmError::NotPresent {
                        tcti: tcti.to_string(),
                        detail,
                    },
                };
            }
        }
        match classify(&err) {
            Class::Tcti(base) if base == TSS2_BASE_RC_TRY_AGAIN => TpmError::Busy {
                tcti: tcti.to_string(),
                detail: describe(&err),
            },
            Class::Tcti(_) => TpmError::NotPresent {
                tcti: tcti.to_string(),
                detail: describe(&err),
            },
            _ => tpm_error("connect", tcti, &err),
        }
    })
}

fn device_path(tcti: &str) -> Option<String> {
    let rest = tcti.strip_prefix("device")?;
    let path = rest.strip_prefix(':').unwrap_or(rest);
    Some(if path.is_empty() { "/dev/tpm0" } else { path }.to_string())
}

// TSS2 return codes: layer in bits 16..24, base code below.
const TSS2_RC_LAYER_TPM: u32 = 0;
const TSS2_RC_LAYER_TCTI: u32 = 10;
const TSS2_RC_LAYER_RESMGR: u32 = 11;
const TSS2_RC_LAYER_RESMGR_TPM: u32 = 12;
const TSS2_BASE_RC_TRY_AGAIN: u32 = 9;

enum Class {
    /// A response code from the TPM (or relayed by a resource manager).
    Tpm(Tss2ResponseCodeKind),
    /// A transport error, with its base code.
    Tcti(u32),
    Other,
}

fn raw_code(err: &tss_esapi::Error) -> Option<u32> {
    match err {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => Some(rc.0),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => Some(rc.0),
        _ => None,
    }
}

fn classify(err: &tss_esapi::Error) -> Class {
    let (Some(raw), tss_esapi::Error::Tss2Error(code)) = (raw_code(err), err) else {
        return Class::Other;
    };
    match (raw >> 16) & 0xff {
        TSS2_RC_LAYER_TPM | TSS2_RC_LAYER_RESMGR_TPM => {
            // `kind` reads the low 16 bits, which is the TPM's code for both layers.
            let tpm_code = match code {
                Tss2ResponseCode::FormatZero(_) | Tss2ResponseCode::FormatOne(_) => {
                    Tss2ResponseCode::from(raw & 0xffff)
                }
                Tss2ResponseCode::Success => return Class::Other,
            };
            tpm_code.kind().map_or(Class::Other, Class::Tpm)
        }
        TSS2_RC_LAYER_TCTI | TSS2_RC_LAYER_RESMGR => Class::Tcti(raw & 0xffff),
        _ => Class::Other,
    }
}

fn describe(err: &tss_esapi::Error) -> String {
    match (classify(err), raw_code(err)) {
        (Class::Tpm(_), Some(raw)) => {
            format!("{} (TPM_RC {raw:#x})", Tss2ResponseCode::from(raw & 0xffff))
        }
        (Class::Tcti(8 | 10), Some(raw)) => {
            format!("nothing answers there: TCTI I/O error, TSS return code {raw:#x}")
        }
        (_, Some(raw)) => format!("TSS return code {raw:#x}"),
        _ => err.to_string(),
    }
}

/// Map a TPM error: lockout and resource exhaustion get their own variants.
fn tpm_error(operation: &'static str, tcti: &str, err: &tss_esapi::Error) -> TpmError {
    match classify(err) {
        Class::Tpm(Tss2ResponseCodeKind::Lockout) => TpmError::Lockout,
        Class::Tpm(
            Tss2ResponseCodeKind::Retry
            | Tss2ResponseCodeKind::Yielded
            | Tss2ResponseCodeKind::Testing
            | Tss2ResponseCodeKind::Canceled
            | Tss2ResponseCodeKind::ObjectMemory
            | Tss2ResponseCodeKind::SessionMemory
            | Tss2ResponseCodeKind::Memory
            | Tss2ResponseCodeKind::ObjectHandles
            | Tss2ResponseCodeKind::SessionHandles
            | Tss2ResponseCodeKind::NvRate
            | Tss2ResponseCodeKind::NvUnavailable,
        ) => TpmError::Busy {
            tcti: tcti.to_string(),
            detail: format!("{operation}: {}", describe(err)),
        },
        Class::Tcti(base) if base == TSS2_BASE_RC_TRY_AGAIN => TpmError::Busy {
            tcti: tcti.to_string(),
            detail: format!("{operation}: {}", describe(err)),
        },
        Class::Tcti(_) => TpmError::NotPresent {
            tcti: tcti.to_string(),
            detail: format!("connection lost during {operation} ({})", describe(err)),
        },
        _ => TpmError::Tpm {
            operation,
            detail: describe(err),
        },
    }
}

/// The TCG's ECC P-256 storage root key template (TCG TPM v2.0 Provisioning Guidance):
/// restricted decryption, AES-128-CFB, unique = 32 zero bytes per coordinate. From an
/// unchanged storage seed it always yields the same key.
fn srk_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(vec![0u8; 32])?,
            EccParameter::try_from(vec![0u8; 32])?,
        ))
        .build()
}

/// An unrestricted P-256 ECDH (decrypt-only) key template. `tpm_generated`: created in
/// this TPM, non-exportable (fixedTPM, fixedParent, sensitiveDataOrigin); otherwise an
/// imported software key (which the TPM requires to have those clear).
fn ecdh_template(
    tpm_generated: bool,
    unique: Option<EccPoint>,
) -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(tpm_generated)
        .with_fixed_parent(tpm_generated)
        .with_sensitive_data_origin(tpm_generated)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_sign_encrypt(false)
        .with_restricted(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_ecc_scheme(EccScheme::Null)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_is_decryption_key(true)
                .with_is_signing_key(false)
                .with_restricted(false)
                .build()?,
        )
        .with_ecc_unique_identifier(unique.unwrap_or_default())
        .build()
}

/// A P-256 coordinate, left-padded to 32 bytes (the TPM may drop leading zeros).
fn coordinate(value: &[u8]) -> Option<[u8; 32]> {
    if value.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - value.len()..].copy_from_slice(value);
    Some(out)
}

fn point_bytes(point: &EccPoint) -> Option<[u8; POINT_LEN]> {
    let mut out = [0u8; POINT_LEN];
    out[0] = 0x04;
    out[1..33].copy_from_slice(&coordinate(point.x().value())?);
    out[33..].copy_from_slice(&coordinate(point.y().value())?);
    Some(out)
}

fn ecc_point(point: &[u8; POINT_LEN]) -> Result<EccPoint, tss_esapi::Error> {
    Ok(EccPoint::new(
        EccParameter::try_from(point[1..33].to_vec())?,
        EccParameter::try_from(point[33..].to_vec())?,
    ))
}

fn public_point_of(public: &Public) -> Option<[u8; POINT_LEN]> {
    match public {
        Public::Ecc { unique, .. } => point_bytes(unique),
        _ => None,
    }
}

/// The storage root key, regenerated, with the salted session that protects what
/// crosses the bus. Both are flushed when `with_srk` returns.
struct Srk {
    handle: KeyHandle,
    point: [u8; POINT_LEN],
}

/// Regenerate the SRK, start a session salted with it (parameter encryption both ways),
/// run `f`, and flush both, whatever `f` returned.
fn with_srk<T>(
    ctx: &mut Context,
    tcti: &str,
    f: impl FnOnce(&mut Context, &Srk) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let template = srk_template().map_err(|e| tpm_error("SRK template", tcti, &e))?;
    let primary = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(|e| hierarchy_error("CreatePrimary (storage root key)", "owner", tcti, &e))?;
    let srk = Srk {
        handle: primary.key_handle,
        point: match public_point_of(&primary.out_public) {
            Some(point) => point,
            None => {
                let _ = ctx.flush_context(primary.key_handle.into());
                return Err(TpmError::Tpm {
                    operation: "CreatePrimary (storage root key)",
                    detail: "the TPM returned a key that is not a P-256 point".into(),
                });
            }
        },
    };
    let result = salted_session(ctx, tcti, srk.handle).and_then(|session| {
        let result = ctx.execute_with_session(Some(session), |ctx| f(ctx, &srk));
        let _ = ctx.flush_context(SessionHandle::from(session).into());
        result
    });
    let _ = ctx.flush_context(srk.handle.into());
    result
}

fn salted_session(ctx: &mut Context, tcti: &str, srk: KeyHandle) -> Result<AuthSession, TpmError> {
    let session = ctx
        .start_auth_session(
            Some(srk),
            None,
            None,
            SessionType::Hmac,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(|e| tpm_error("StartAuthSession", tcti, &e))?
        .ok_or_else(|| TpmError::Tpm {
            operation: "StartAuthSession",
            detail: "no session handle returned".into(),
        })?;
    let (attributes, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .with_continue_session(true)
        .build();
    if let Err(e) = ctx.tr_sess_set_attributes(session, attributes, mask) {
        let _ = ctx.flush_context(SessionHandle::from(session).into());
        return Err(tpm_error("TRSess_SetAttributes", tcti, &e));
    }
    Ok(session)
}

/// A TPM object created under the regenerated SRK, as the node directory keeps it: its
/// TPM2B_PUBLIC and TPM2B_PRIVATE (marshalled), and the SRK's public point it was
/// created under (so that a different or cleared TPM is named as such before anything
/// is loaded). Shared by the unwrap key ([`TpmKeyBlobs`]) and the sealed signing seed
/// ([`SealedSecret`]).
#[derive(Clone, PartialEq, Eq)]
struct ObjectBlobs {
    public: Vec<u8>,
    private: Vec<u8>,
    parent: [u8; POINT_LEN],
}

/// The most a key file may be (its blobs are a few hundred bytes).
const KEY_FILE_LIMIT: u64 = 16 * 1024;

impl ObjectBlobs {
    fn from_parts(
        public: &Public,
        private: &Private,
        parent: [u8; POINT_LEN],
    ) -> Result<Self, tss_esapi::Error> {
        let public = PublicBuffer::try_from(public.clone())?.marshall()?;
        let private_bytes = private.value();
        let length = u16::try_from(private_bytes.len()).map_err(|_| {
            tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongParamSize)
        })?;
        let mut private = length.to_be_bytes().to_vec();
        private.extend_from_slice(private_bytes);
        Ok(ObjectBlobs {
            public,
            private,
            parent,
        })
    }

    /// Decode the hex fields of a key file and check that the blobs parse; returns the
    /// blobs and the object's public area. `bad` names the file in errors.
    fn from_hex(
        bad: &dyn Fn(String) -> TpmError,
        parent_point: &str,
        tpm2b_public: &str,
        tpm2b_private: &str,
    ) -> Result<(Self, Public), TpmError> {
        let blob_field = |name: &str, value: &str| {
            hex::decode(value).map_err(|_| bad(format!("{name} is not hex")))
        };
        let blobs = ObjectBlobs {
            parent: point_field(bad, "parent_point", parent_point)?,
            public: blob_field("tpm2b_public", tpm2b_public)?,
            private: blob_field("tpm2b_private", tpm2b_private)?,
        };
        let public = blobs.tpm_public().map_err(bad)?;
        blobs.tpm_private().map_err(bad)?;
        Ok((blobs, public))
    }

    fn tpm_public(&self) -> Result<Public, String> {
        let buffer = PublicBuffer::unmarshall(&self.public)
            .map_err(|e| format!("TPM2B_PUBLIC does not parse: {e}"))?;
        Public::try_from(buffer).map_err(|e| format!("TPM2B_PUBLIC does not parse: {e}"))
    }

    fn tpm_private(&self) -> Result<Private, String> {
        let (length, body) = self
            .private
            .split_first_chunk::<2>()
            .ok_or("TPM2B_PRIVATE is truncated")?;
        if usize::from(u16::from_be_bytes(*length)) != body.len() {
            return Err("TPM2B_PRIVATE's size does not match its length".into());
        }
        Private::try_from(body.to_vec()).map_err(|e| format!("TPM2B_PRIVATE: {e}"))
    }

    /// Open the TPM at `tcti`, regenerate the SRK, check that it is the one the object
    /// was created under, load the object and run `f` with its handle (in the salted
    /// session), then flush everything. `file` names the node-directory file in errors,
    /// `operation` the load.
    fn with_loaded<T>(
        &self,
        tcti: &str,
        file: &str,
        operation: &'static str,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let bad = bad_file(file);
        let public = self.tpm_public().map_err(bad)?;
        let private = self.tpm_private().map_err(bad)?;
        let mut ctx = open_context(tcti)?;
        with_srk(&mut ctx, tcti, |ctx, srk| {
            if srk.point != self.parent {
                return Err(TpmError::ReEnrollmentNeeded {
                    detail: format!(
                        "this TPM's storage root key differs from the one {file} was created under"
                    ),
                });
            }
            let object = ctx
                .load(srk.handle, private, public)
                .map_err(|e| match classify(&e) {
                    Class::Tpm(
                        Tss2ResponseCodeKind::Integrity
                        | Tss2ResponseCodeKind::Size
                        | Tss2ResponseCodeKind::Key
                        | Tss2ResponseCodeKind::Binding,
                    ) => TpmError::ReEnrollmentNeeded {
                        detail: format!("TPM2_Load of {file}: {}", describe(&e)),
                    },
                    _ => tpm_error(operation, tcti, &e),
                })?;
            let result = f(ctx, object);
            let _ = ctx.flush_context(ObjectHandle::from(object));
            result
        })
    }
}

/// A hex field holding an uncompressed P-256 point.
fn point_field(
    bad: &dyn Fn(String) -> TpmError,
    name: &str,
    value: &str,
) -> Result<[u8; POINT_LEN], TpmError> {
    hex::decode(value)
        .ok()
        .and_then(|v| <[u8; POINT_LEN]>::try_from(v).ok())
        .filter(|p| p[0] == 0x04)
        .ok_or_else(|| bad(format!("{name} is not an uncompressed P-256 point")))
}

/// The error for the node-directory file at `path`, with what is wrong with it.
fn bad_file(path: &str) -> impl Fn(String) -> TpmError + Copy + '_ {
    move |detail| TpmError::BadKeyFile {
        path: path.to_string(),
        detail,
    }
}

/// Parse the JSON node-directory file at `path` (its `bytes`), refusing a `format`
/// (read by `format_of`) other than `expected`.
fn parse_node_file<T: serde::de::DeserializeOwned>(
    path: &str,
    bytes: &[u8],
    expected: &str,
    format_of: impl Fn(&T) -> &String,
) -> Result<T, TpmError> {
    let bad = bad_file(path);
    let file: T = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let format = format_of(&file);
    if format != expected {
        return Err(bad(format!(
            "unknown format {format:?} (expected {expected:?})"
        )));
    }
    Ok(file)
}

/// Serialize a key file (pretty JSON, newline-terminated).
fn file_bytes(file: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(file).expect("plain strings serialize");
    bytes.push(b'\n');
    bytes
}

/// Write a node-directory key file: mode 0600, never over an existing one.
fn write_key_file(path: &Path, bytes: &[u8]) -> Result<(), TpmError> {
    fsutil::write_atomic(path, bytes, fsutil::SECRET_MODE, Replace::Never)?;
    Ok(())
}

/// Read a node-directory key file and parse it with `parse`.
fn read_key_file<T>(
    path: &Path,
    parse: impl FnOnce(&str, &[u8]) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let bytes = fsutil::read_limited(path, KEY_FILE_LIMIT, "TPM key file")?;
    parse(&path.display().to_string(), &bytes)
}

/// The TPM key as stored in the node directory: its TPM2B_PUBLIC and TPM2B_PRIVATE
/// (marshalled), its public point, and the SRK's public point it was created under
/// (so that a different or cleared TPM is named as such before anything is loaded).
#[derive(Clone, PartialEq, Eq)]
pub struct TpmKeyBlobs {
    object: ObjectBlobs,
    point: [u8; POINT_LEN],
}

impl std::fmt::Debug for TpmKeyBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKeyBlobs")
            .field("point", &hex::encode(self.point))
            .field("parent", &hex::encode(self.object.parent))
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    suite: String,
    /// Uncompressed SEC1 point (hex): what licenses are wrapped to.
    public_point: String,
    /// The SRK's uncompressed point (hex) when the key was created.
    parent_point: String,
    /// Marshalled TPM2B_PUBLIC (hex).
    tpm2b_public: String,
    /// Marshalled TPM2B_PRIVATE (hex), encrypted by the TPM under the SRK.
    tpm2b_private: String,
}

impl TpmKeyBlobs {
    /// The key's uncompressed P-256 public point: what licenses are wrapped to.
    pub fn public_point(&self) -> [u8; POINT_LEN] {
        self.point
    }

    /// Marshalled TPM2B_PUBLIC.
    pub fn tpm2b_public(&self) -> &[u8] {
        &self.object.public
    }

    /// Marshalled TPM2B_PRIVATE (encrypted by the TPM; useless on another TPM).
    pub fn tpm2b_private(&self) -> &[u8] {
        &self.object.private
    }

    fn from_parts(
        public: &Public,
        private: &Private,
        parent: [u8; POINT_LEN],
    ) -> Result<Self, tss_esapi::Error> {
        let point = public_point_of(public).ok_or(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::WrongValueFromTpm,
        ))?;
        Ok(TpmKeyBlobs {
            object: ObjectBlobs::from_parts(public, private, parent)?,
            point,
        })
    }

    /// The key file's contents (JSON).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        file_bytes(&KeyFile {
            format: KEY_FILE_FORMAT.into(),
            suite: hpke_p256::SUITE.into(),
            public_point: hex::encode(self.point),
            parent_point: hex::encode(self.object.parent),
            tpm2b_public: hex::encode(&self.object.public),
            tpm2b_private: hex::encode(&self.object.private),
        })
    }

    /// Parse a key file's contents; `path` only names it in errors.
    pub fn from_file_bytes(path: &str, bytes: &[u8]) -> Result<Self, TpmError> {
        let bad = bad_file(path);
        let file: KeyFile = parse_node_file(path, bytes, KEY_FILE_FORMAT, |f: &KeyFile| &f.format)?;
        if file.suite != hpke_p256::SUITE {
            return Err(bad(format!("unknown suite {:?}", file.suite)));
        }
        let point = point_field(&bad, "public_point", &file.public_point)?;
        let (object, public) = ObjectBlobs::from_hex(
            &bad,
            &file.parent_point,
            &file.tpm2b_public,
            &file.tpm2b_private,
        )?;
        if public_point_of(&public) != Some(point) {
            return Err(bad(
                "public_point differs from the point in tpm2b_public".into()
            ));
        }
        Ok(TpmKeyBlobs { object, point })
    }

    /// Write the key file (mode 0600; never over an existing one).
    pub fn write(&self, path: &Path) -> Result<(), TpmError> {
        write_key_file(path, &self.to_file_bytes())
    }

    /// Read a key file.
    pub fn read(path: &Path) -> Result<Self, TpmError> {
        read_key_file(path, Self::from_file_bytes)
    }
}

/// Create a non-exportable P-256 ECDH key in the TPM at `tcti`, under the regenerated
/// SRK. Store the result in the node directory ([`KEY_FILE`]).
pub fn create_unwrap_key(tcti: &str) -> Result<TpmKeyBlobs, TpmError> {
    let mut ctx = open_context(tcti)?;
    with_srk(&mut ctx, tcti, |ctx, srk| {
        let template =
            ecdh_template(true, None).map_err(|e| tpm_error("key template", tcti, &e))?;
        let created = ctx
            .create(srk.handle, template, None, None, None, None)
            .map_err(|e| tpm_error("Create (unwrap key)", tcti, &e))?;
        TpmKeyBlobs::from_parts(&created.out_public, &created.out_private, srk.point)
            .map_err(|e| tpm_error("Create (unwrap key)", tcti, &e))
    })
}

/// Import a P-256 secret scalar generated in software into the TPM at `tcti` under the
/// regenerated SRK (TPM2_Import, no outer or inner wrapper). The result works like a
/// key from [`create_unwrap_key`] but is NOT hardware-bound (its secret existed outside
/// the TPM, and the TPM marks it neither fixedTPM nor sensitiveDataOrigin): for
/// cross-checks between the TPM and software halves, and for tests.
pub fn import_software_key(tcti: &str, secret: &[u8; 32]) -> Result<TpmKeyBlobs, TpmError> {
    let point = hpke_p256::public_point(secret).map_err(|_| TpmError::Malformed)?;
    let mut ctx = open_context(tcti)?;
    with_srk(&mut ctx, tcti, |ctx, srk| {
        let local = |e: tss_esapi::Error| tpm_error("Import (prepare)", tcti, &e);
        let public =
            ecdh_template(false, Some(ecc_point(&point).map_err(local)?)).map_err(local)?;
        let sensitive = Sensitive::Ecc {
            auth_value: Auth::default(),
            seed_value: Digest::default(),
            sensitive: EccParameter::try_from(secret.to_vec()).map_err(local)?,
        };
        // No wrapper: the duplicate is the plain marshalled TPM2B_SENSITIVE.
        let duplicate = Zeroizing::new(
            SensitiveBuffer::try_from(sensitive)
                .and_then(|b| b.marshall())
                .map_err(local)?,
        );
        let duplicate = Private::try_from(duplicate.to_vec()).map_err(local)?;
        let private = ctx
            .import(
                srk.handle.into(),
                None,
                public.clone(),
                duplicate,
                EncryptedSecret::default(),
                SymmetricDefinitionObject::Null,
            )
            .map_err(|e| tpm_error("Import", tcti, &e))?;
        TpmKeyBlobs::from_parts(&public, &private, srk.point).map_err(local)
    })
}

/// A node's unwrap key held in a TPM. Holds no TPM connection: each unwrap opens one,
/// regenerates the SRK, loads the key, computes the DH and flushes everything (an ESAPI
/// context is not `Send`, and a node unwraps a handful of keys per license load).
#[derive(Debug, Clone)]
pub struct TpmUnwrapper {
    tcti: String,
    blobs: TpmKeyBlobs,
}

impl TpmUnwrapper {
    /// Check that `blobs` load in the TPM at `tcti` (same TPM, not cleared since) and
    /// keep them for unwrapping.
    pub fn load(tcti: &str, blobs: TpmKeyBlobs) -> Result<Self, TpmError> {
        let unwrapper = TpmUnwrapper {
            tcti: tcti.to_string(),
            blobs,
        };
        unwrapper.with_key(|_, _| Ok(()))?;
        Ok(unwrapper)
    }

    /// The key's uncompressed P-256 public point: what licenses are wrapped to.
    pub fn public_point(&self) -> [u8; POINT_LEN] {
        self.blobs.point
    }

    /// The TCTI this key is used through.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Load the key under the regenerated SRK and run `f` with its handle.
    fn with_key<T>(
        &self,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        self.blobs
            .object
            .with_loaded(&self.tcti, KEY_FILE, "Load (unwrap key)", f)
    }

    /// Open a 32-byte secret wrapped with HPKE DHKEM(P-256, HKDF-SHA256)/HKDF-SHA256/
    /// AES-256-GCM (empty AAD) to this key under `info`: the TPM computes the DH on `enc`.
    pub fn unwrap_p256(
        &self,
        info: &[u8],
        enc: &[u8; POINT_LEN],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        // The TPM checks the point too; checking here first gives the clearer error.
        if p256::PublicKey::from_sec1_bytes(enc).is_err() || enc[0] != 0x04 {
            return Err(TpmError::Malformed);
        }
        let tcti = self.tcti.as_str();
        let dh = self.with_key(|ctx, key| {
            let point = ecc_point(enc).map_err(|_| TpmError::Malformed)?;
            let z = ctx.ecdh_z_gen(key, point).map_err(|e| match classify(&e) {
                Class::Tpm(Tss2ResponseCodeKind::EccPoint) => TpmError::Malformed,
                _ => tpm_error("ECDH_ZGen", tcti, &e),
            })?;
            coordinate(z.x().value())
                .map(Zeroizing::new)
                .ok_or_else(|| TpmError::Tpm {
                    operation: "ECDH_ZGen",
                    detail: "the TPM returned an x-coordinate longer than 32 bytes".into(),
                })
        })?;
        let plaintext = hpke_p256::open(
            &dh,
            enc,
            &self.blobs.point,
            info,
            b"",
            ciphertext,
            Aead::Aes256Gcm,
        )
        .map_err(|e| match e {
            OpenError::Malformed => TpmError::Malformed,
            OpenError::NotForThisKey => TpmError::NotForThisKey,
        })?;
        let secret: [u8; 32] = plaintext[..]
            .try_into()
            .map_err(|_| TpmError::NotForThisKey)?;
        Ok(Zeroizing::new(secret))
    }
}

/// The node-directory file holding the TPM-sealed Ed25519 signing seed.
pub const SEALED_SIGNING_KEY_FILE: &str = "node.key.tpm";
/// The `format` field of [`SEALED_SIGNING_KEY_FILE`].
pub const SEALED_SIGNING_KEY_FORMAT: &str = "leasehold TPM sealed signing key v1";

/// A sealed data object template (KEYEDHASH, no scheme): bound to this TPM and to the SRK
/// (fixedTPM, fixedParent), usable with its (empty) auth value, outside the
/// dictionary-attack logic (noDA), so a TPM in lockout still unseals it. The data comes
/// from the caller, so sensitiveDataOrigin must be clear.
fn sealed_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(false)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_decrypt(false)
        .with_sign_encrypt(false)
        .with_restricted(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// A 32-byte secret (the node's Ed25519 signing seed) sealed to a TPM: a sealed data
/// object under the regenerated SRK, as the node directory keeps it
/// ([`SEALED_SIGNING_KEY_FILE`]). Its private blob is encrypted under the SRK, so it
/// unseals on this TPM only, and on no TPM at all once this one has been cleared.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    object: ObjectBlobs,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("parent", &hex::encode(self.object.parent))
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: String,
    /// The SRK's uncompressed point (hex) when the object was created.
    parent_point: String,
    /// Marshalled TPM2B_PUBLIC (hex) of the sealed data object.
    tpm2b_public: String,
    /// Marshalled TPM2B_PRIVATE (hex), encrypted by the TPM under the SRK.
    tpm2b_private: String,
}

/// Seal `secret` to the TPM at `tcti` (TPM2_Create of a sealed data object under the
/// regenerated SRK). The secret crosses the bus encrypted (the salted session's command
/// parameter encryption). Store the result in the node directory
/// ([`SEALED_SIGNING_KEY_FILE`]).
pub fn seal_secret(tcti: &str, secret: &[u8; 32]) -> Result<SealedSecret, TpmError> {
    let mut ctx = open_context(tcti)?;
    with_srk(&mut ctx, tcti, |ctx, srk| {
        let local = |e: tss_esapi::Error| tpm_error("Create (sealed signing key)", tcti, &e);
        let template = sealed_template().map_err(local)?;
        // SensitiveData zeroizes its buffer when dropped.
        let data = SensitiveData::try_from(secret.as_slice()).map_err(local)?;
        let created = ctx
            .create(srk.handle, template, None, Some(data), None, None)
            .map_err(local)?;
        let object = ObjectBlobs::from_parts(&created.out_public, &created.out_private, srk.point)
            .map_err(local)?;
        Ok(SealedSecret { object })
    })
}

impl SealedSecret {
    /// Unseal the secret in the TPM at `tcti` (TPM2_Load, TPM2_Unseal). It crosses the bus
    /// encrypted (the salted session's response parameter encryption). A copy of the
    /// node directory on another TPM, or on this one after a clear, gets
    /// [`TpmError::ReEnrollmentNeeded`].
    pub fn unseal(&self, tcti: &str) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        self.object.with_loaded(
            tcti,
            SEALED_SIGNING_KEY_FILE,
            "Load (sealed signing key)",
            |ctx, object| {
                // TPM2_Unseal has no command parameter to encrypt: ask for response
                // encryption only. (tpm2-tss with swtpm accepts decrypt set here too,
                // but TPM 2.0 Part 1 lets a TPM refuse it with TPM_RC_ATTRIBUTES.)
                if let (Some(session), _, _) = ctx.sessions() {
                    let (attributes, mask) = SessionAttributesBuilder::new()
                        .with_decrypt(false)
                        .with_encrypt(true)
                        .build();
                    ctx.tr_sess_set_attributes(session, attributes, mask)
                        .map_err(|e| tpm_error("TRSess_SetAttributes", tcti, &e))?;
                }
                let data = ctx
                    .unseal(object.into())
                    .map_err(|e| tpm_error("Unseal (sealed signing key)", tcti, &e))?;
                <[u8; 32]>::try_from(data.value())
                    .map(Zeroizing::new)
                    .map_err(|_| TpmError::Tpm {
                        operation: "Unseal (sealed signing key)",
                        detail: format!(
                            "the sealed object holds {} bytes, not a 32-byte seed",
                            data.len()
                        ),
                    })
            },
        )
    }

    /// The sealed key file's contents (JSON).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        file_bytes(&SealedFile {
            format: SEALED_SIGNING_KEY_FORMAT.into(),
            parent_point: hex::encode(self.object.parent),
            tpm2b_public: hex::encode(&self.object.public),
            tpm2b_private: hex::encode(&self.object.private),
        })
    }

    /// Parse a sealed key file's contents; `path` only names it in errors.
    pub fn from_file_bytes(path: &str, bytes: &[u8]) -> Result<Self, TpmError> {
        let bad = bad_file(path);
        let file: SealedFile =
            parse_node_file(path, bytes, SEALED_SIGNING_KEY_FORMAT, |f: &SealedFile| {
                &f.format
            })?;
        let (object, public) = ObjectBlobs::from_hex(
            &bad,
            &file.parent_point,
            &file.tpm2b_public,
            &file.tpm2b_private,
        )?;
        if !matches!(public, Public::KeyedHash { .. }) {
            return Err(bad(
                "tpm2b_public is not a sealed data object (KEYEDHASH)".into()
            ));
        }
        Ok(SealedSecret { object })
    }

    /// Write the sealed key file (mode 0600; never over an existing one).
    pub fn write(&self, path: &Path) -> Result<(), TpmError> {
        write_key_file(path, &self.to_file_bytes())
    }

    /// Read a sealed key file.
    pub fn read(path: &Path) -> Result<Self, TpmError> {
        read_key_file(path, Self::from_file_bytes)
    }
}

/// The NV indices leasehold picks its counter from: a sub-range of the TCG's owner range
/// (0x01000000..=0x013FFFFF), away from its start, where tools put indices by default.
pub const COUNTER_INDEX_RANGE: RangeInclusive<u32> = 0x0138_0000..=0x0138_FFFF;
/// Random picks in [`COUNTER_INDEX_RANGE`] before giving up on finding a free index.
const COUNTER_ATTEMPTS: usize = 32;

/// A random index in [`COUNTER_INDEX_RANGE`].
fn random_counter_index() -> u32 {
    COUNTER_INDEX_RANGE.start() | u32::from(u16::from_be_bytes(random::bytes::<2>()))
}

/// A TPM monotonic counter: an NV index of type TPM_NT_COUNTER, which only the TPM can
/// move, and only up. A counter defined at a handle after an earlier one was deleted
/// starts at least at the largest value any counter on the TPM has had (TPM 2.0 Part 1,
/// "NV counters"), so deleting and redefining it does not wind it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvCounter {
    /// The NV index handle (in [`COUNTER_INDEX_RANGE`] when made by [`create_counter`]).
    pub index: u32,
    /// The index's password (authValue): random per node, kept in the node directory
    /// (mode 0600), so that other users of the TPM cannot move the counter.
    pub auth: [u8; COUNTER_AUTH_LEN],
}

/// The length of a counter's password.
pub const COUNTER_AUTH_LEN: usize = 16;

/// Define a monotonic counter in the TPM at `tcti` (TPM2_NV_DefineSpace under the owner
/// hierarchy, with the empty owner password the TCG's provisioning guidance leaves) at a
/// free random index of [`COUNTER_INDEX_RANGE`], with a random password, and increment
/// it once: a counter cannot be read before its first write.
pub fn create_counter(tcti: &str) -> Result<NvCounter, TpmError> {
    create_counter_with(tcti, random::bytes::<COUNTER_AUTH_LEN>())
}

/// [`create_counter`] with the password `auth`.
pub fn create_counter_with(
    tcti: &str,
    auth: [u8; COUNTER_AUTH_LEN],
) -> Result<NvCounter, TpmError> {
    const OPERATION: &str = "NV_DefineSpace (counter)";
    let local = |e: tss_esapi::Error| tpm_error(OPERATION, tcti, &e);
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_auth_write(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()
        .map_err(local)?;
    let mut ctx = open_context(tcti)?;
    for _ in 0..COUNTER_ATTEMPTS {
        let index = random_counter_index();
        let public = NvPublicBuilder::new()
            .with_nv_index(NvIndexTpmHandle::new(index).map_err(local)?)
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attributes)
            .with_data_area_size(COUNTER_SIZE.into())
            .build()
            .map_err(local)?;
        let password = Auth::try_from(auth.to_vec()).map_err(local)?;
        let defined = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_define_space(Provision::Owner, Some(password), public)
        });
        let handle = match defined {
            Ok(handle) => handle,
            Err(e) if matches!(classify(&e), Class::Tpm(Tss2ResponseCodeKind::NvDefined)) => {
                continue
            }
            Err(e) => return Err(hierarchy_error(OPERATION, "owner", tcti, &e)),
        };
        let counter = NvCounter { index, auth };
        let incremented = counter
            .set_auth(&mut ctx, tcti, handle)
            .and_then(|()| increment_counter(&mut ctx, tcti, handle));
        if let Err(err) = incremented {
            // Leave no half-made counter behind.
            let _ = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_undefine_space(Provision::Owner, handle)
            });
            return Err(err);
        }
        return Ok(counter);
    }
    Err(TpmError::Tpm {
        operation: OPERATION,
        detail: format!(
            "{COUNTER_ATTEMPTS} random indices in {:#010x}..={:#010x} were all taken",
            COUNTER_INDEX_RANGE.start(),
            COUNTER_INDEX_RANGE.end()
        ),
    })
}

/// A counter's data area: a big-endian u64.
const COUNTER_SIZE: u16 = 8;

/// The `format` field of the counter file (`counter.tpm`).
pub const COUNTER_FILE_FORMAT: &str = "leasehold TPM state counter v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterFileJson {
    format: String,
    /// `0x` and eight hex digits, as tpm2-tools print NV indices.
    nv_index: String,
    /// The counter of refused rolled-back states, spelled the same way.
    rollbacks_nv_index: String,
    /// Both counters' password, 32 hex.
    auth: String,
}

/// A TPM node's two counters: the node state's, and the count of rolled-back states
/// the node refused (reported to the license server, which sees it rise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCounters {
    pub state: NvCounter,
    pub rollbacks: NvCounter,
}

impl NodeCounters {
    /// Define both counters in the TPM at `tcti`, with one random password; the first
    /// is undefined again when the second cannot be made.
    pub fn create(tcti: &str) -> Result<NodeCounters, TpmError> {
        let state = create_counter(tcti)?;
        let rollbacks = create_counter_with(tcti, state.auth).inspect_err(|_| {
            let _ = state.undefine(tcti);
        })?;
        Ok(NodeCounters { state, rollbacks })
    }

    /// Both counters and the TPM's Clock, over one connection (each counter checked to
    /// be one, as [`NvCounter::read`] does).
    pub fn read_with_clock(&self, tcti: &str) -> Result<CounterReading, TpmError> {
        let mut ctx = open_context(tcti)?;
        let state = self.state.open(&mut ctx, tcti)?;
        let counter = read_counter(&mut ctx, tcti, state)?;
        let rollbacks = self.rollbacks.open(&mut ctx, tcti)?;
        let rollbacks = read_counter(&mut ctx, tcti, rollbacks)?;
        let clock_ms = read_clock(&mut ctx, tcti)?;
        Ok(CounterReading {
            counter,
            rollbacks,
            clock_ms,
        })
    }

    /// The counter file's bytes (pretty JSON).
    pub fn to_file_bytes(&self) -> Vec<u8> {
        file_bytes(&CounterFileJson {
            format: COUNTER_FILE_FORMAT.into(),
            nv_index: format!("{:#010x}", self.state.index),
            rollbacks_nv_index: format!("{:#010x}", self.rollbacks.index),
            auth: hex::encode(self.state.auth),
        })
    }

    /// Parse a counter file (`path` names it in errors).
    pub fn from_file_bytes(path: &str, bytes: &[u8]) -> Result<NodeCounters, TpmError> {
        let bad = bad_file(path);
        let json: CounterFileJson =
            parse_node_file(path, bytes, COUNTER_FILE_FORMAT, |f: &CounterFileJson| {
                &f.format
            })?;
        let auth: [u8; COUNTER_AUTH_LEN] = hex::decode(&json.auth)
            .ok()
            .and_then(|a| a.try_into().ok())
            .ok_or_else(|| bad(format!("auth is not {} hex digits", 2 * COUNTER_AUTH_LEN)))?;
        let index = |field: &str, value: &str| {
            value
                .strip_prefix("0x")
                .filter(|h| h.len() == 8)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .filter(|i| (0x0100_0000..=0x01FF_FFFF).contains(i))
                .map(|index| NvCounter { index, auth })
                .ok_or_else(|| {
                    bad(format!(
                        "{field} {value:?} is not an NV index (0x01000000 to 0x01ffffff)"
                    ))
                })
        };
        let counters = NodeCounters {
            state: index("nv_index", &json.nv_index)?,
            rollbacks: index("rollbacks_nv_index", &json.rollbacks_nv_index)?,
        };
        if counters.state == counters.rollbacks {
            return Err(bad(
                "nv_index and rollbacks_nv_index are the same index".into()
            ));
        }
        Ok(counters)
    }

    /// Write the counter file (mode 0600: it holds the counters' password): never over
    /// an existing one.
    pub fn write_file(&self, path: &Path) -> Result<(), TpmError> {
        write_key_file(path, &self.to_file_bytes())
    }

    /// Read a counter file.
    pub fn read_file(path: &Path) -> Result<NodeCounters, TpmError> {
        read_key_file(path, Self::from_file_bytes)
    }
}

/// A node's two counters and the TPM's Clock, read in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterReading {
    /// The state's counter.
    pub counter: u64,
    /// The count of refused rolled-back states.
    pub rollbacks: u64,
    /// The TPM's Clock (TPMS_CLOCK_INFO.clock): milliseconds the TPM has been powered,
    /// kept across reboots (a power loss can set it back to its last save, at most
    /// about 70 minutes), moved only forward by TPM2_ClockSet, reset by TPM2_Clear.
    pub clock_ms: u64,
}

impl NvCounter {
    /// The counter's value (TPM2_NV_Read), after checking that the index is still a
    /// counter ([`TpmError::NotACounter`], [`TpmError::CounterGone`]).
    pub fn read(&self, tcti: &str) -> Result<u64, TpmError> {
        let mut ctx = open_context(tcti)?;
        let handle = self.open(&mut ctx, tcti)?;
        read_counter(&mut ctx, tcti, handle)
    }

    /// Increment the counter (TPM2_NV_Increment) and return its value after, after
    /// checking that the index is still a counter.
    pub fn increment(&self, tcti: &str) -> Result<u64, TpmError> {
        let mut ctx = open_context(tcti)?;
        let handle = self.open(&mut ctx, tcti)?;
        increment_counter(&mut ctx, tcti, handle)
    }

    /// Remove the counter (TPM2_NV_UndefineSpace, owner hierarchy).
    pub fn undefine(&self, tcti: &str) -> Result<(), TpmError> {
        let mut ctx = open_context(tcti)?;
        let handle = self.open(&mut ctx, tcti)?;
        ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_undefine_space(Provision::Owner, handle)
        })
        .map_err(|e| hierarchy_error("NV_UndefineSpace (counter)", "owner", tcti, &e))
    }

    /// Find the index (TPM2_NV_ReadPublic) and check that it is a TPM_NT_COUNTER: an
    /// operator who deleted the counter could have defined an ordinary index there,
    /// which they could write freely. The ESAPI handle is closed with `ctx`.
    fn open(&self, ctx: &mut Context, tcti: &str) -> Result<NvIndexHandle, TpmError> {
        let index = self.index;
        let tpm_handle = NvIndexTpmHandle::new(index).map_err(|_| TpmError::Tpm {
            operation: "NV_ReadPublic (counter)",
            detail: format!("{index:#010x} is not an NV index handle"),
        })?;
        let missing = |e: tss_esapi::Error| match classify(&e) {
            Class::Tpm(Tss2ResponseCodeKind::Handle) => TpmError::CounterGone { index },
            _ => tpm_error("NV_ReadPublic (counter)", tcti, &e),
        };
        let handle = ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle.into()))
            .map(NvIndexHandle::from)
            .map_err(missing)?;
        let (public, _) = ctx
            .execute_without_session(|ctx| ctx.nv_read_public(handle))
            .map_err(missing)?;
        match public.attributes().index_type() {
            Ok(NvIndexType::Counter) => {
                self.set_auth(ctx, tcti, handle)?;
                Ok(handle)
            }
            Ok(kind) => Err(TpmError::NotACounter {
                index,
                kind: format!("{kind:?}").to_lowercase(),
            }),
            Err(_) => Err(TpmError::NotACounter {
                index,
                kind: "unknown".into(),
            }),
        }
    }
}

impl NvCounter {
    /// Use this counter's password for the index behind `handle`.
    fn set_auth(
        &self,
        ctx: &mut Context,
        tcti: &str,
        handle: NvIndexHandle,
    ) -> Result<(), TpmError> {
        let password = Auth::try_from(self.auth.to_vec())
            .map_err(|e| tpm_error("TR_SetAuth (counter)", tcti, &e))?;
        ctx.tr_set_auth(handle.into(), password)
            .map_err(|e| tpm_error("TR_SetAuth (counter)", tcti, &e))
    }
}

/// A counter command refused for its password: `counter.tpm` does not hold the
/// password the counter was made with.
fn counter_auth_error(err: &tss_esapi::Error, handle: NvIndexHandle) -> Option<TpmError> {
    matches!(
        classify(err),
        Class::Tpm(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail)
    )
    .then(|| TpmError::CounterPassword {
        index: u32::from(ObjectHandle::from(handle)),
    })
}

fn read_counter(ctx: &mut Context, tcti: &str, handle: NvIndexHandle) -> Result<u64, TpmError> {
    let data = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.nv_read(NvAuth::NvIndex(handle), handle, COUNTER_SIZE, 0)
        })
        .map_err(|e| match classify(&e) {
            Class::Tpm(Tss2ResponseCodeKind::NvUninitialized) => TpmError::Tpm {
                operation: "NV_Read (counter)",
                detail: format!(
                    "the counter was defined but never incremented (enrollment was interrupted); {REENROLL}"
                ),
            },
            _ => counter_auth_error(&e, handle)
                .unwrap_or_else(|| tpm_error("NV_Read (counter)", tcti, &e)),
        })?;
    <[u8; 8]>::try_from(data.value())
        .map(u64::from_be_bytes)
        .map_err(|_| TpmError::Tpm {
            operation: "NV_Read (counter)",
            detail: format!("the TPM returned {} bytes, not 8", data.len()),
        })
}

fn increment_counter(
    ctx: &mut Context,
    tcti: &str,
    handle: NvIndexHandle,
) -> Result<u64, TpmError> {
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_increment(NvAuth::NvIndex(handle), handle)
    })
    .map_err(|e| {
        counter_auth_error(&e, handle)
            .unwrap_or_else(|| tpm_error("NV_Increment (counter)", tcti, &e))
    })?;
    read_counter(ctx, tcti, handle)
}

/// The TPM's Clock, from an unsigned TPM2_GetTime (signing key TPM_RH_NULL; the
/// endorsement hierarchy's empty password authorizes it).
fn read_clock(ctx: &mut Context, tcti: &str) -> Result<u64, TpmError> {
    const OPERATION: &str = "GetTime (clock)";
    let (attest, _) = ctx
        .execute_with_sessions(
            (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            ),
            |ctx| ctx.get_time(KeyHandle::Null, Data::default(), SignatureScheme::Null),
        )
        .map_err(|e| hierarchy_error(OPERATION, "endorsement", tcti, &e))?;
    Ok(attest.clock_info().clock())
}

/// The SHA-256 of the TPM's endorsement key public area: the `tpm-ek` hardware
/// component. The EK is regenerated from the TCG's default ECC NIST P-256 template (EK
/// Credential Profile, template L-2; an ECC primary key is made in milliseconds where
/// an RSA one can take seconds on a hardware TPM) in the endorsement hierarchy (empty
/// password), and the hash covers its marshalled TPMT_PUBLIC as the TPM returned it,
/// point included. It is the same for as long as the TPM's endorsement seed is, which
/// TPM2_Clear does not change.
pub fn endorsement_key_sha256(tcti: &str) -> Result<[u8; 32], TpmError> {
    const OPERATION: &str = "CreatePrimary (endorsement key)";
    let template =
        ek::create_ek_public_from_default_template(AsymmetricAlgorithm::Ecc, None::<DefaultKey>)
            .map_err(|e| tpm_error(OPERATION, tcti, &e))?;
    let mut ctx = open_context(tcti)?;
    let primary = ctx
        .execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
        })
        .map_err(|e| hierarchy_error(OPERATION, "endorsement", tcti, &e))?;
    let _ = ctx.flush_context(primary.key_handle.into());
    let tpmt_public = primary
        .out_public
        .marshall()
        .map_err(|e| tpm_error(OPERATION, tcti, &e))?;
    Ok(Sha256::digest(&tpmt_public).into())
}

/// Map an error from a command authorized by a hierarchy with the empty password: a
/// refused password and a full NV get their own messages.
fn hierarchy_error(
    operation: &'static str,
    hierarchy: &'static str,
    tcti: &str,
    err: &tss_esapi::Error,
) -> TpmError {
    match classify(err) {
        Class::Tpm(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail) => {
            TpmError::HierarchyPassword {
                hierarchy,
                detail: format!("{operation}: {}", describe(err)),
            }
        }
        Class::Tpm(Tss2ResponseCodeKind::NvSpace) => TpmError::Tpm {
            operation,
            detail: format!(
                "the TPM's NV memory is full ({}); list its indices with tpm2_getcap handles-nv-index and remove unused ones with tpm2_nvundefine",
                describe(err)
            ),
        },
        _ => tpm_error(operation, tcti, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcti_is_chosen_as_tpm2_tools_choose_it() {
        assert_eq!(
            select_tcti_from(
                Some("swtpm:host=127.0.0.1,port=2321"),
                Some("device:/dev/tpm0")
            ),
            "swtpm:host=127.0.0.1,port=2321"
        );
        assert_eq!(
            select_tcti_from(None, Some("device:/dev/tpm0")),
            "device:/dev/tpm0"
        );
        assert_eq!(select_tcti_from(Some(" "), Some("")), DEFAULT_TCTI);
        assert_eq!(select_tcti_from(None, None), DEFAULT_TCTI);
    }

    #[test]
    fn device_paths() {
        assert_eq!(
            device_path("device:/dev/tpmrm0").as_deref(),
            Some("/dev/tpmrm0")
        );
        assert_eq!(device_path("device").as_deref(), Some("/dev/tpm0"));
        assert_eq!(device_path("swtpm:port=1"), None);
    }

    fn sealed_for_test() -> SealedSecret {
        let public = sealed_template().unwrap();
        let private = Private::try_from(vec![7u8; 64]).unwrap();
        let mut parent = [9u8; POINT_LEN];
        parent[0] = 0x04;
        SealedSecret {
            object: ObjectBlobs::from_parts(&public, &private, parent).unwrap(),
        }
    }

    #[test]
    fn sealed_key_files_round_trip_and_are_checked() {
        let sealed = sealed_for_test();
        let bytes = sealed.to_file_bytes();
        assert_eq!(SealedSecret::from_file_bytes("f", &bytes).unwrap(), sealed);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["format"], SEALED_SIGNING_KEY_FORMAT);

        let altered = |field: &str, value: serde_json::Value| {
            let mut json = json.clone();
            json[field] = value;
            let err =
                SealedSecret::from_file_bytes("node.key.tpm", &serde_json::to_vec(&json).unwrap())
                    .unwrap_err();
            assert!(matches!(err, TpmError::BadKeyFile { .. }), "{err}");
            err.to_string()
        };
        let message = altered("format", KEY_FILE_FORMAT.into());
        assert!(message.contains("unknown format"), "{message}");
        assert!(message.starts_with("node.key.tpm: "), "{message}");
        let message = altered("extra", "x".into());
        assert!(message.contains("unknown field"), "{message}");
        let message = altered("parent_point", "04".into());
        assert!(message.contains("parent_point"), "{message}");
        let message = altered("tpm2b_private", "0040".into());
        assert!(message.contains("TPM2B_PRIVATE"), "{message}");
        let message = altered("tpm2b_public", "zz".into());
        assert!(message.contains("not hex"), "{message}");
        let message = altered("tpm2b_public", "0001".into());
        assert!(message.contains("TPM2B_PUBLIC"), "{message}");
        // An unwrap key's public area is not a sealed data object.
        let ecdh = PublicBuffer::try_from(ecdh_template(true, None).unwrap())
            .unwrap()
            .marshall()
            .unwrap();
        let message = altered("tpm2b_public", hex::encode(ecdh).into());
        assert!(message.contains("not a sealed data object"), "{message}");
        let err = SealedSecret::from_file_bytes("f", b"not json").unwrap_err();
        assert!(matches!(err, TpmError::BadKeyFile { .. }), "{err}");
    }

    #[test]
    fn counter_files_round_trip_and_are_checked() {
        let counters = NodeCounters {
            state: NvCounter {
                index: 0x0138_00ab,
                auth: [7; COUNTER_AUTH_LEN],
            },
            rollbacks: NvCounter {
                index: 0x0138_00ac,
                auth: [7; COUNTER_AUTH_LEN],
            },
        };
        let bytes = counters.to_file_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"nv_index\": \"0x013800ab\""), "{text}");
        assert!(
            text.contains("\"rollbacks_nv_index\": \"0x013800ac\""),
            "{text}"
        );
        assert_eq!(
            NodeCounters::from_file_bytes("f", &bytes).unwrap(),
            counters
        );
        assert!(text.contains(&"07".repeat(COUNTER_AUTH_LEN)), "{text}");
        let file = |format: &str, state: &str, rollbacks: &str| {
            format!(
                r#"{{"format":"{format}","nv_index":"{state}","rollbacks_nv_index":"{rollbacks}","auth":"{}"}}"#,
                "07".repeat(COUNTER_AUTH_LEN)
            )
        };
        let v1 = COUNTER_FILE_FORMAT;
        for (bad, why) in [
            (file(v1, "0x81000001", "0x01380001"), "not an NV index"),
            (file(v1, "0x138", "0x01380001"), "not an NV index"),
            (file(v1, "0x01380000", "0x0138zzzz"), "rollbacks_nv_index"),
            (file(v1, "0x01380000", "0x01380000"), "the same index"),
            (
                file("something else", "0x01380000", "0x01380001"),
                "unknown format",
            ),
            (
                r#"{"format":"leasehold TPM state counter v1","nv_index":"0x01380000"}"#.into(),
                "missing field",
            ),
            (
                file(v1, "0x01380000", "0x01380001").replace("\"auth\":\"07", "\"auth\":\""),
                "auth is not 32 hex digits",
            ),
        ] {
            let err = NodeCounters::from_file_bytes("counter.tpm", bad.as_bytes()).unwrap_err();
            assert!(matches!(err, TpmError::BadKeyFile { .. }), "{err}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn counter_indices_stay_in_the_leasehold_sub_range() {
        assert!(*COUNTER_INDEX_RANGE.start() >= 0x0100_0000);
        assert!(*COUNTER_INDEX_RANGE.end() <= 0x013F_FFFF);
        for _ in 0..1000 {
            let index = random_counter_index();
            assert!(COUNTER_INDEX_RANGE.contains(&index), "{index:#x}");
            NvIndexTpmHandle::new(index).unwrap();
        }
    }

    #[test]
    fn a_missing_device_is_named() {
        let err = open_context("device:/nonexistent/tpmrm9").unwrap_err();
        assert!(matches!(err, TpmError::NotPresent { .. }), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = open_context("carrier-pigeon:coop=3").unwrap_err();
        assert!(matches!(err, TpmError::InvalidTcti { .. }), "{err}");
    }
}
