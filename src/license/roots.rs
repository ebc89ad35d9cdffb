//! The trust roots compiled into this binary from `keys/` (see build.rs). There is no
//! way to add a root at run time: no flag, environment variable or file.

use crate::crypto::signing::PublicKey;

pub(crate) struct CompiledRoot {
    name: &'static str,
    key: [u8; 32],
    demo: bool,
}

include!(concat!(env!("OUT_DIR"), "/roots.rs"));

/// A root public key the binary trusts.
#[derive(Debug, Clone)]
pub struct Root {
    pub key: PublicKey,
    /// Where it came from in `keys/`.
    pub name: String,
    /// The demo root, whose secret is public: licenses it signs protect nothing.
    pub demo: bool,
}

/// The set of trusted roots.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    roots: Vec<Root>,
}

impl TrustRoots {
    /// The roots compiled into this build.
    pub fn compiled_in() -> TrustRoots {
        TrustRoots {
            roots: COMPILED_ROOTS
                .iter()
                .map(|r| Root {
                    key: PublicKey::from_bytes(&r.key)
                        .expect("build.rs compiled in a valid Ed25519 key"),
                    name: r.name.to_string(),
                    demo: r.demo,
                })
                .collect(),
        }
    }

    pub fn find(&self, key: &PublicKey) -> Option<&Root> {
        self.roots.iter().find(|r| r.key == *key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Root> {
        self.roots.iter()
    }

    /// One line per root, for `leasehold --version`: its key id and where it came
    /// from, and `DEMO` for the demo root, so that a build that trusts it is seen.
    pub fn describe(&self) -> String {
        self.roots
            .iter()
            .map(|r| {
                format!(
                    "trusted root {} ({}){}",
                    r.key.key_id(),
                    r.name,
                    if r.demo {
                        " DEMO: its secret key is public, so anyone can sign licenses this \
                         build accepts; not for production"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
