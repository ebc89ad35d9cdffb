//! The node identity: an Ed25519 key that signs enrollments, node state and (later)
//! renewal requests and ledger checkpoints, and an X25519 key that unwraps content keys.
//! Both are created once per node directory and never overwritten.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::crypto::key_wrap::{KeyUnwrapper, UnwrapPublicKey, UnwrapSecret};
use crate::crypto::keyfile::{self, KeyFileError, KeyKind};
use crate::crypto::signing::{DocumentSigner, PublicKey, SecretKey};
use crate::fsutil::FsError;
use crate::node::trusted_time::StateAnchor;

pub const SIGNING_KEY_FILE: &str = "node.key";
pub const SIGNING_PUB_FILE: &str = "node.pub";
pub const UNWRAP_KEY_FILE: &str = "unwrap.key";
pub const UNWRAP_PUB_FILE: &str = "unwrap.pub";
/// A TPM-held unwrap key's blobs (in place of `unwrap.key`; useless on another TPM).
pub const TPM_UNWRAP_KEY_FILE: &str = "unwrap.tpm";
/// TPM nodes: the signing key's seed sealed to the TPM (in place of `node.key`).
pub const TPM_SIGNING_KEY_FILE: &str = "node.key.tpm";
/// TPM nodes: the NV index of the counter that anchors the node state.
pub const TPM_COUNTER_FILE: &str = "counter.tpm";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{dir} holds no node identity ({SIGNING_KEY_FILE} is missing); run `leasehold enroll --node-dir {dir}` first")]
    NotEnrolled { dir: String },
    #[error("{dir} holds {present} but not {missing}; the node identity is incomplete. Restore the missing file from a backup, or enroll a fresh node directory")]
    Incomplete {
        dir: String,
        present: &'static str,
        missing: &'static str,
    },
    #[error("cannot create the node directory {dir}: {source}")]
    CreateDir { dir: String, source: std::io::Error },
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The TPM that holds (or was to hold) a node key failed; the message says what to do.
    #[error("{0}")]
    Tpm(String),
    /// The node's TPM keys do not load on this TPM: the node directory came from another
    /// machine, or this TPM was cleared since enrollment.
    #[error("{0}")]
    TpmNotThisMachine(String),
}

/// The public half of a node identity, as licenses bind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePublic {
    pub signing_key: PublicKey,
    pub unwrap_key: UnwrapPublicKey,
}

impl NodePublic {
    /// The node id: the signing key's id.
    pub fn node_id(&self) -> String {
        self.signing_key.key_id()
    }
}

/// A node's keys, loaded from its directory, behind the two seams every user of them
/// goes through: a document signer and a key unwrapper. File keys are zeroized on drop.
#[derive(Clone)]
pub struct NodeIdentity {
    dir: PathBuf,
    signer: Arc<dyn DocumentSigner>,
    unwrapper: Arc<dyn KeyUnwrapper>,
    unwrap_location: KeyLocation,
    signing_location: KeyLocation,
    /// TPM nodes: the counter and clock the node state is checked against.
    anchor: Option<Arc<dyn StateAnchor>>,
}

/// Where a new node's unwrap key is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnwrapKeyStore {
    /// An X25519 key in `unwrap.key` (mode 0600).
    File,
    /// A non-exportable P-256 key created by the TPM at this TCTI; the node directory
    /// keeps only its TPM-encrypted blobs (`unwrap.tpm`).
    Tpm { tcti: String },
}

/// Where a node's unwrap key lives, for `fingerprint` and `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    File,
    Tpm { tcti: String },
}

impl std::fmt::Display for KeyLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyLocation::File => write!(f, "file"),
            KeyLocation::Tpm { tcti } => write!(f, "tpm ({tcti})"),
        }
    }
}

impl NodeIdentity {
    /// Load the identity in `dir`. A TPM-held unwrap key is checked against the TPM
    /// chosen as tpm2-tools choose it (the `TCTI` environment variable, else
    /// `device:/dev/tpmrm0`).
    pub fn load(dir: &Path) -> Result<NodeIdentity, IdentityError> {
        let signing_path = dir.join(SIGNING_KEY_FILE);
        let sealed_signing_path = dir.join(TPM_SIGNING_KEY_FILE);
        let unwrap_path = dir.join(UNWRAP_KEY_FILE);
        let tpm_path = dir.join(TPM_UNWRAP_KEY_FILE);
        let signing_present = if sealed_signing_path.exists() {
            TPM_SIGNING_KEY_FILE
        } else {
            SIGNING_KEY_FILE
        };
        let has_signing = signing_path.exists() || sealed_signing_path.exists();
        let unwrap_present = if tpm_path.exists() {
            TPM_UNWRAP_KEY_FILE
        } else {
            UNWRAP_KEY_FILE
        };
        let has_unwrap = unwrap_path.exists() || tpm_path.exists();
        match (has_signing, has_unwrap) {
            (false, false) => {
                return Err(IdentityError::NotEnrolled {
                    dir: dir.display().to_string(),
                })
            }
            (true, false) => {
                return Err(IdentityError::Incomplete {
                    dir: dir.display().to_string(),
                    present: signing_present,
                    missing: if signing_present == TPM_SIGNING_KEY_FILE {
                        TPM_UNWRAP_KEY_FILE
                    } else {
                        UNWRAP_KEY_FILE
                    },
                })
            }
            (false, true) => {
                return Err(IdentityError::Incomplete {
                    dir: dir.display().to_string(),
                    present: unwrap_present,
                    missing: if unwrap_present == TPM_UNWRAP_KEY_FILE {
                        TPM_SIGNING_KEY_FILE
                    } else {
                        SIGNING_KEY_FILE
                    },
                })
            }
            (true, true) => {}
        }
        let counter_path = dir.join(TPM_COUNTER_FILE);
        let tpm_node = sealed_signing_path.exists() || tpm_path.exists();
        if tpm_node && !counter_path.exists() {
            return Err(IdentityError::Incomplete {
                dir: dir.display().to_string(),
                present: unwrap_present,
                missing: TPM_COUNTER_FILE,
            });
        }
        let (signing, signing_location) = if sealed_signing_path.exists() {
            tpm_keys::unseal_signing_key(&sealed_signing_path)?
        } else {
            warn_if_exposed(&signing_path);
            (keyfile::read_secret_key(&signing_path)?, KeyLocation::File)
        };
        let (unwrapper, location): (Arc<dyn KeyUnwrapper>, KeyLocation) = if tpm_path.exists() {
            tpm_keys::load(&tpm_path)?
        } else {
            warn_if_exposed(&unwrap_path);
            let unwrap = keyfile::read(&unwrap_path, KeyKind::X25519Secret)?;
            (
                Arc::new(UnwrapSecret::from_bytes(*unwrap)),
                KeyLocation::File,
            )
        };
        let anchor = if tpm_node {
            Some(tpm_keys::load_anchor(&counter_path)?)
        } else {
            None
        };
        Ok(NodeIdentity {
            dir: dir.to_path_buf(),
            signer: Arc::new(signing),
            unwrapper,
            unwrap_location: location,
            signing_location,
            anchor,
        })
    }

    /// Load the identity in `dir`, creating it (and `dir`, mode 0700) with file keys
    /// when absent. Returns whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(NodeIdentity, bool), IdentityError> {
        Self::load_or_create_with(dir, &UnwrapKeyStore::File)
    }

    /// Load the identity in `dir`, or create it with its unwrap key in `store`. An
    /// existing identity is returned as it is (whatever `store` says).
    pub fn load_or_create_with(
        dir: &Path,
        store: &UnwrapKeyStore,
    ) -> Result<(NodeIdentity, bool), IdentityError> {
        match Self::load(dir) {
            Err(IdentityError::NotEnrolled { .. }) => {}
            other => return other.map(|id| (id, false)),
        }
        fs::create_dir_all(dir).map_err(|source| IdentityError::CreateDir {
            dir: dir.display().to_string(),
            source,
        })?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        let signing = SecretKey::generate();
        let id = signing.public_key().key_id();
        // Unwrap key first: a crash between the two leaves `Incomplete`, which names the fix,
        // rather than a signing key whose unwrap half never existed.
        let (unwrapper, location): (Arc<dyn KeyUnwrapper>, KeyLocation) = match store {
            UnwrapKeyStore::File => {
                let unwrap = UnwrapSecret::generate();
                keyfile::write(
                    &dir.join(UNWRAP_KEY_FILE),
                    KeyKind::X25519Secret,
                    unwrap.as_bytes(),
                    &format!("leasehold node {id} X25519 unwrap key; keep private, never copy to another machine"),
                )?;
                keyfile::write(
                    &dir.join(UNWRAP_PUB_FILE),
                    KeyKind::X25519Public,
                    &unwrap.public_key(),
                    &format!("leasehold node {id} X25519 public key"),
                )?;
                (Arc::new(unwrap), KeyLocation::File)
            }
            UnwrapKeyStore::Tpm { tcti } => tpm_keys::create(dir, tcti)?,
        };
        let signing_location = match store {
            UnwrapKeyStore::File => {
                keyfile::write(
                    &dir.join(SIGNING_KEY_FILE),
                    KeyKind::Ed25519Secret,
                    &signing.to_bytes(),
                    &format!("leasehold node {id} Ed25519 signing key; keep private, never copy to another machine"),
                )?;
                KeyLocation::File
            }
            // Sealed to the TPM: the seed never touches the disk in clear. If sealing
            // fails, the unwrap key's blobs go too, so that enrolling again starts afresh.
            UnwrapKeyStore::Tpm { tcti } => tpm_keys::seal_signing_key(dir, tcti, &signing)
                .inspect_err(|_| {
                    let _ = fs::remove_file(dir.join(TPM_UNWRAP_KEY_FILE));
                })?,
        };
        // The state's counter last: if it cannot be made, the TPM keys' files go too.
        let anchor = match store {
            UnwrapKeyStore::File => None,
            UnwrapKeyStore::Tpm { tcti } => {
                Some(tpm_keys::create_anchor(dir, tcti).inspect_err(|_| {
                    let _ = fs::remove_file(dir.join(TPM_UNWRAP_KEY_FILE));
                    let _ = fs::remove_file(dir.join(TPM_SIGNING_KEY_FILE));
                })?)
            }
        };
        keyfile::write(
            &dir.join(SIGNING_PUB_FILE),
            KeyKind::Ed25519Public,
            &signing.public_key().to_bytes(),
            &format!("leasehold node {id} Ed25519 public key"),
        )?;
        Ok((
            NodeIdentity {
                dir: dir.to_path_buf(),
                signer: Arc::new(signing),
                unwrapper,
                unwrap_location: location,
                signing_location,
                anchor,
            },
            true,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn public(&self) -> NodePublic {
        NodePublic {
            signing_key: self.signer.public_key(),
            unwrap_key: self.unwrapper.public_key(),
        }
    }

    /// Signs the node's documents: enrollment, state, renewal requests, checkpoint
    /// reports, ledger checkpoints and head, attestations.
    pub fn signer(&self) -> &dyn DocumentSigner {
        &*self.signer
    }

    /// The signer, shared (the usage ledger's writer keeps it).
    pub fn shared_signer(&self) -> Arc<dyn DocumentSigner> {
        Arc::clone(&self.signer)
    }

    /// Opens the content and watermark keys licenses wrap to this node.
    pub fn unwrapper(&self) -> &dyn KeyUnwrapper {
        &*self.unwrapper
    }

    /// Where the unwrap key lives.
    pub fn unwrap_location(&self) -> &KeyLocation {
        &self.unwrap_location
    }

    /// TPM nodes: the TCTI of the TPM that holds the unwrap key.
    pub fn tpm_tcti(&self) -> Option<&str> {
        match &self.unwrap_location {
            KeyLocation::Tpm { tcti } => Some(tcti),
            KeyLocation::File => None,
        }
    }

    /// Where the signing key is kept (TPM nodes: sealed to the TPM, unsealed into
    /// zeroized memory at load).
    pub fn signing_location(&self) -> &KeyLocation {
        &self.signing_location
    }

    /// TPM nodes: what the node state is anchored in (its TPM counter and Clock).
    pub fn state_anchor(&self) -> Option<&dyn StateAnchor> {
        self.anchor.as_deref()
    }
}

#[cfg(feature = "tpm")]
mod tpm_keys {
    use super::*;
    use crate::crypto::key_wrap::{p256_encapsulated, UnwrapError, WrappedKey};
    use crate::node::tpm::{self, TpmError, TpmKeyBlobs, TpmUnwrapper};
    use crate::node::trusted_time::{AnchorError, AnchorReading};
    use zeroize::Zeroizing;

    impl KeyUnwrapper for TpmUnwrapper {
        fn public_key(&self) -> UnwrapPublicKey {
            UnwrapPublicKey::P256(self.public_point())
        }

        fn unwrap(
            &self,
            info: &[u8],
            wrapped: &WrappedKey,
        ) -> Result<Zeroizing<[u8; 32]>, UnwrapError> {
            let enc = p256_encapsulated(wrapped)?;
            self.unwrap_p256(info, enc, &wrapped.ciphertext)
                .map_err(|e| match e {
                    TpmError::NotForThisKey => UnwrapError::NotForThisKey,
                    TpmError::Malformed => UnwrapError::Malformed,
                    other => UnwrapError::Device(other.to_string()),
                })
        }
    }

    pub(super) fn load(path: &Path) -> Result<(Arc<dyn KeyUnwrapper>, KeyLocation), IdentityError> {
        let tcti = tpm::select_tcti(None);
        let blobs = TpmKeyBlobs::read(path).map_err(tpm_error)?;
        let unwrapper = TpmUnwrapper::load(&tcti, blobs).map_err(tpm_error)?;
        Ok((Arc::new(unwrapper), KeyLocation::Tpm { tcti }))
    }

    pub(super) fn create(
        dir: &Path,
        tcti: &str,
    ) -> Result<(Arc<dyn KeyUnwrapper>, KeyLocation), IdentityError> {
        let blobs = tpm::create_unwrap_key(tcti).map_err(tpm_error)?;
        blobs
            .write(&dir.join(TPM_UNWRAP_KEY_FILE))
            .map_err(tpm_error)?;
        let unwrapper = TpmUnwrapper::load(tcti, blobs).map_err(tpm_error)?;
        Ok((
            Arc::new(unwrapper),
            KeyLocation::Tpm {
                tcti: tcti.to_string(),
            },
        ))
    }

    pub(super) fn seal_signing_key(
        dir: &Path,
        tcti: &str,
        key: &SecretKey,
    ) -> Result<KeyLocation, IdentityError> {
        let sealed = tpm::seal_secret(tcti, &key.to_bytes()).map_err(tpm_error)?;
        sealed
            .write(&dir.join(TPM_SIGNING_KEY_FILE))
            .map_err(tpm_error)?;
        Ok(KeyLocation::Tpm {
            tcti: tcti.to_string(),
        })
    }

    pub(super) fn unseal_signing_key(
        path: &Path,
    ) -> Result<(SecretKey, KeyLocation), IdentityError> {
        let tcti = tpm::select_tcti(None);
        let sealed = tpm::SealedSecret::read(path).map_err(tpm_error)?;
        let seed = sealed.unseal(&tcti).map_err(tpm_error)?;
        Ok((SecretKey::from_bytes(&seed), KeyLocation::Tpm { tcti }))
    }

    /// The node state's anchor: the counter named in `counter.tpm`, on the TPM chosen
    /// as for the keys.
    struct TpmStateAnchor {
        tcti: String,
        counters: tpm::NodeCounters,
    }

    impl StateAnchor for TpmStateAnchor {
        fn nv_index(&self) -> u32 {
            self.counters.state.index
        }

        fn read(&self) -> Result<AnchorReading, AnchorError> {
            // The count of refused states is read too, so that it must be there: a node
            // whose count was deleted would refuse rollbacks without the license server
            // hearing of them.
            let reading = self
                .counters
                .read_with_clock(&self.tcti)
                .map_err(anchor_error)?;
            Ok(AnchorReading {
                counter: reading.counter,
                clock_ms: reading.clock_ms,
            })
        }

        fn increment(&self) -> Result<u64, AnchorError> {
            self.counters
                .state
                .increment(&self.tcti)
                .map_err(anchor_error)
        }

        fn rollbacks(&self) -> Result<u64, AnchorError> {
            self.counters
                .rollbacks
                .read(&self.tcti)
                .map_err(anchor_error)
        }

        fn record_rollback(&self) -> Result<u64, AnchorError> {
            self.counters
                .rollbacks
                .increment(&self.tcti)
                .map_err(anchor_error)
        }
    }

    fn anchor_error(e: TpmError) -> AnchorError {
        AnchorError {
            gone: matches!(
                e,
                TpmError::CounterGone { .. }
                    | TpmError::NotACounter { .. }
                    | TpmError::CounterPassword { .. }
            ),
            message: e.to_string(),
        }
    }

    pub(super) fn load_anchor(path: &Path) -> Result<Arc<dyn StateAnchor>, IdentityError> {
        let counters = tpm::NodeCounters::read_file(path).map_err(tpm_error)?;
        Ok(Arc::new(TpmStateAnchor {
            tcti: tpm::select_tcti(None),
            counters,
        }))
    }

    pub(super) fn create_anchor(
        dir: &Path,
        tcti: &str,
    ) -> Result<Arc<dyn StateAnchor>, IdentityError> {
        let counters = tpm::NodeCounters::create(tcti).map_err(tpm_error)?;
        counters
            .write_file(&dir.join(TPM_COUNTER_FILE))
            .inspect_err(|_| {
                let _ = counters.state.undefine(tcti);
                let _ = counters.rollbacks.undefine(tcti);
            })
            .map_err(tpm_error)?;
        Ok(Arc::new(TpmStateAnchor {
            tcti: tcti.to_string(),
            counters,
        }))
    }

    fn tpm_error(e: TpmError) -> IdentityError {
        match e {
            TpmError::ReEnrollmentNeeded { .. } => IdentityError::TpmNotThisMachine(e.to_string()),
            other => IdentityError::Tpm(other.to_string()),
        }
    }
}

/// A build without the `tpm` feature: TPM nodes are named, not loaded.
#[cfg(not(feature = "tpm"))]
mod tpm_keys {
    use super::*;

    const NO_TPM_BUILD: &str =
        "this leasehold was built without TPM support (cargo feature `tpm`); use a build with it";

    fn refused(path: &Path, what: &str) -> IdentityError {
        IdentityError::Tpm(format!(
            "{}: {what} is in a TPM; {NO_TPM_BUILD}",
            path.display()
        ))
    }

    pub(super) fn load(path: &Path) -> Result<(Arc<dyn KeyUnwrapper>, KeyLocation), IdentityError> {
        Err(refused(path, "this node's unwrap key"))
    }

    pub(super) fn create(
        _dir: &Path,
        _tcti: &str,
    ) -> Result<(Arc<dyn KeyUnwrapper>, KeyLocation), IdentityError> {
        Err(IdentityError::Tpm(format!(
            "enroll without --tpm, or use a build with TPM support: {NO_TPM_BUILD}"
        )))
    }

    pub(super) fn seal_signing_key(
        dir: &Path,
        _tcti: &str,
        _key: &SecretKey,
    ) -> Result<KeyLocation, IdentityError> {
        Err(refused(dir, "a new node's signing key"))
    }

    pub(super) fn unseal_signing_key(
        path: &Path,
    ) -> Result<(SecretKey, KeyLocation), IdentityError> {
        Err(refused(path, "this node's signing key"))
    }

    pub(super) fn load_anchor(path: &Path) -> Result<Arc<dyn StateAnchor>, IdentityError> {
        Err(refused(path, "this node's state counter"))
    }

    pub(super) fn create_anchor(
        dir: &Path,
        _tcti: &str,
    ) -> Result<Arc<dyn StateAnchor>, IdentityError> {
        Err(refused(dir, "a new node's state counter"))
    }
}

fn warn_if_exposed(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
    }
}
