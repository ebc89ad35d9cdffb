//! Shared fixtures: a node with a made-up hardware profile, a sealed synthetic model,
//! the demo root, and licenses issued with chosen terms.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use leasehold::crypto::keyfile;
use leasehold::crypto::signing::SecretKey;
use leasehold::crypto::ContentKey;
use leasehold::format::Envelope;
use leasehold::license::issue::{issue, Terms};
use leasehold::license::{Caps, Checks, TrustRoots};
use leasehold::node::enrollment::{self, BindingChoice, DeclaredUse, EnrollmentBody};
use leasehold::node::hardware::{ComponentKind, HardwareProfile};
use leasehold::node::trusted_time::TimeContext;
use leasehold::node::{NodeIdentity, NodePublic};
use leasehold::seal::{self, Header, SealedModel};
use tempfile::TempDir;

pub mod audit;
pub mod gguf;
pub mod node;
pub mod plaintext;
pub mod postgres;
pub mod stories;
pub mod swtpm;
pub mod vectors;
pub mod vendor;
pub mod webdriver;

/// The demo model (LEASEHOLD_DEMO_MODEL) and a Python with `openai` (LEASEHOLD_PYTHON),
/// which scripts/test.sh provides; `None` (the test skips) only when
/// LEASEHOLD_REQUIRE_ALL is unset.
pub fn demo_prerequisites() -> Option<(PathBuf, PathBuf)> {
    let model = std::env::var_os("LEASEHOLD_DEMO_MODEL").map(PathBuf::from);
    let python = std::env::var_os("LEASEHOLD_PYTHON").map(PathBuf::from);
    match (model, python) {
        (Some(m), Some(p)) => Some((m, p)),
        _ => {
            assert!(
                std::env::var_os("LEASEHOLD_REQUIRE_ALL").is_none(),
                "LEASEHOLD_DEMO_MODEL and LEASEHOLD_PYTHON must be set when LEASEHOLD_REQUIRE_ALL is"
            );
            eprintln!("LEASEHOLD_DEMO_MODEL or LEASEHOLD_PYTHON not set: run scripts/test.sh for the end-to-end tests");
            None
        }
    }
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn demo_root() -> SecretKey {
    keyfile::read_secret_key(&repo_path("keys/demo/root.key")).expect("demo root key")
}

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// A fixed "now" for library tests.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
}

/// Bytes that start like a GGUF file (magic + version 3) followed by pseudo-random data.
/// The container does not parse GGUF beyond its magic, so this is enough to seal.
pub fn synthetic_gguf(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn profile(pairs: &[(ComponentKind, &str)]) -> HardwareProfile {
    HardwareProfile::from_pairs(pairs)
}

pub fn machine_a() -> HardwareProfile {
    use ComponentKind::*;
    profile(&[
        (MachineId, "0123456789abcdef0123456789abcdef"),
        (CpuModel, "Test CPU 9000"),
        (MemoryClass, "32GiB"),
        (MacAddress, "02:00:00:00:00:01,02:00:00:00:00:02"),
        (Hostname, "node-a"),
    ])
}

pub struct Fixture {
    pub dir: TempDir,
    pub root: SecretKey,
    pub identity: NodeIdentity,
    pub profile: HardwareProfile,
    pub enrollment: EnrollmentBody,
    pub sealed_path: PathBuf,
    pub header: Header,
    pub key: ContentKey,
    pub plaintext: Vec<u8>,
    pub roots: TrustRoots,
}

impl Fixture {
    pub fn new() -> Fixture {
        Self::with_model(200_000, 4096)
    }

    pub fn with_model(len: usize, segment: u32) -> Fixture {
        let dir = TempDir::new().unwrap();
        let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
        let profile = machine_a();
        let envelope = enrollment::create(
            &identity,
            &profile,
            &BindingChoice::default(),
            DeclaredUse {
                use_case: "tests".into(),
                data_handling: "none".into(),
                ..Default::default()
            },
            None,
            now(),
        )
        .unwrap();
        let enrollment = enrollment::verify(envelope.render().as_bytes()).unwrap();
        let plaintext = synthetic_gguf(len, 7);
        let model_path = dir.path().join("model.gguf");
        std::fs::write(&model_path, &plaintext).unwrap();
        let sealed_path = dir.path().join("model.sealed");
        let key = ContentKey::generate();
        let header = seal::seal_file(
            &model_path,
            "test-model",
            &sealed_path,
            &key,
            segment,
            &seal::no_progress,
            || Ok(()),
        )
        .unwrap();
        Fixture {
            dir,
            root: demo_root(),
            identity,
            profile,
            enrollment,
            sealed_path,
            header,
            key,
            plaintext,
            roots: TrustRoots::compiled_in(),
        }
    }

    pub fn public(&self) -> NodePublic {
        self.identity.public()
    }

    /// Valid from an hour before `now()` for a day, one hour of grace.
    pub fn terms(&self) -> Terms {
        Terms {
            licensee: "Example Org".into(),
            not_before: now() - Duration::hours(1),
            expires_at: now() + Duration::days(1),
            grace: Duration::hours(1),
            serial: 1,
            caps: Caps::default(),
            features: vec![],
            renewal: vec![],
            issued_at: now() - Duration::hours(1),
            license_id: None,
            safeguards: Default::default(),
        }
    }

    pub fn issue_with(
        &self,
        signer: &SecretKey,
        chain: Option<Envelope>,
        terms: &Terms,
    ) -> Vec<u8> {
        issue(
            signer,
            chain,
            &self.enrollment,
            &self.header,
            &self.key,
            terms,
        )
        .unwrap()
        .render()
        .into_bytes()
    }

    pub fn license(&self) -> Vec<u8> {
        self.issue_with(&self.root, None, &self.terms())
    }

    pub fn sealed(&self) -> SealedModel {
        SealedModel::open(&self.sealed_path).unwrap()
    }
}

/// Checks on machine A with this node's keys at `now`.
pub fn checks<'a>(
    node: &'a NodePublic,
    profile: &'a HardwareProfile,
    now: DateTime<Utc>,
) -> Checks<'a> {
    Checks {
        node: Some(node),
        hardware: Some(profile),
        time: TimeContext::new(now, None),
        memory: None,
    }
}
