//! The node identity: an Ed25519 key that signs enrollments, node state and (later)
//! renewal requests and ledger checkpoints, and an X25519 key that unwraps content keys.
//! Both are created once per node directory and never overwritten.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::crypto::key_wrap::{KeyUnwrapper, UnwrapSecret};
use crate::crypto::keyfile::{self, KeyFileError, KeyKind};
use crate::crypto::signing::{DocumentSigner, PublicKey, SecretKey};
use crate::fsutil::FsError;

pub const SIGNING_KEY_FILE: &str = "node.key";
pub const SIGNING_PUB_FILE: &str = "node.pub";
pub const UNWRAP_KEY_FILE: &str = "unwrap.key";
pub const UNWRAP_PUB_FILE: &str = "unwrap.pub";

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
}

/// The public half of a node identity, as licenses bind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePublic {
    pub signing_key: PublicKey,
    pub unwrap_key: [u8; 32],
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
}

impl NodeIdentity {
    /// Load the identity in `dir`.
    pub fn load(dir: &Path) -> Result<NodeIdentity, IdentityError> {
        let signing_path = dir.join(SIGNING_KEY_FILE);
        let unwrap_path = dir.join(UNWRAP_KEY_FILE);
        match (signing_path.exists(), unwrap_path.exists()) {
            (false, false) => {
                return Err(IdentityError::NotEnrolled {
                    dir: dir.display().to_string(),
                })
            }
            (true, false) => {
                return Err(IdentityError::Incomplete {
                    dir: dir.display().to_string(),
                    present: SIGNING_KEY_FILE,
                    missing: UNWRAP_KEY_FILE,
                })
            }
            (false, true) => {
                return Err(IdentityError::Incomplete {
                    dir: dir.display().to_string(),
                    present: UNWRAP_KEY_FILE,
                    missing: SIGNING_KEY_FILE,
                })
            }
            (true, true) => {}
        }
        warn_if_exposed(&signing_path);
        warn_if_exposed(&unwrap_path);
        let signing = keyfile::read_secret_key(&signing_path)?;
        let unwrap = keyfile::read(&unwrap_path, KeyKind::X25519Secret)?;
        Ok(NodeIdentity {
            dir: dir.to_path_buf(),
            signer: Arc::new(signing),
            unwrapper: Arc::new(UnwrapSecret::from_bytes(*unwrap)),
        })
    }

    /// Load the identity in `dir`, creating it (and `dir`, mode 0700) when absent.
    /// Returns whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(NodeIdentity, bool), IdentityError> {
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
        let unwrap = UnwrapSecret::generate();
        let id = signing.public_key().key_id();
        // Unwrap key first: a crash between the two leaves `Incomplete`, which names the fix,
        // rather than a signing key whose unwrap half never existed.
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
        keyfile::write(
            &dir.join(SIGNING_KEY_FILE),
            KeyKind::Ed25519Secret,
            &signing.to_bytes(),
            &format!("leasehold node {id} Ed25519 signing key; keep private, never copy to another machine"),
        )?;
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
                unwrapper: Arc::new(unwrap),
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
