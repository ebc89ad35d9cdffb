//! Seal and unseal throughput of a 256 MiB buffer, on one thread and on all cores, and
//! license verification time.
//!
//!     cargo bench --bench seal
//!
//! Compare with `openssl speed -evp aes-256-gcm` on the same machine. The target is
//! unseal on all cores ≥ 0.9 × cores × the one-thread rate.

use std::hint::black_box;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use leasehold::crypto::keyfile;
use leasehold::crypto::ContentKey;
use leasehold::license::issue::{issue, Terms};
use leasehold::license::verify::{authenticate, evaluate};
use leasehold::license::{Caps, Checks, TrustRoots};
use leasehold::node::enrollment::{self, BindingChoice, DeclaredUse};
use leasehold::node::hardware::HardwareProfile;
use leasehold::node::trusted_time::TimeContext;
use leasehold::node::NodeIdentity;
use leasehold::seal::stream::SegmentCipher;
use leasehold::seal::{decrypt_body, encrypt_body, header, no_progress, Header};

const SIZE: usize = 256 << 20;

fn pools() -> Vec<(String, rayon::ThreadPool)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![("1-thread".to_string(), 1)];
    if cores > 1 {
        out.push((format!("{cores}-threads"), cores));
    }
    out.into_iter()
        .map(|(name, n)| {
            (
                name,
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap(),
            )
        })
        .collect()
}

fn seal_unseal(c: &mut Criterion) {
    let key = ContentKey::generate();
    let plaintext: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let header = Header {
        segment_size: header::DEFAULT_SEGMENT,
        plaintext_len: SIZE as u64,
        plaintext_sha256: [0; 32],
        key_id: key.key_id(),
        nonce_prefix: [9; 7],
        model_id: "bench".into(),
    };
    let cipher = SegmentCipher::new(&key, &header);
    let body_len = (header.sealed_len() - header.encoded_len() as u64) as usize;
    let mut body = vec![0u8; body_len];
    encrypt_body(&cipher, &header, &plaintext, &mut body, &no_progress);
    let mut out = vec![0u8; SIZE];

    let mut group = c.benchmark_group("seal_256MiB");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, pool) in pools() {
        group.bench_function(BenchmarkId::new("seal", &name), |b| {
            b.iter(|| {
                pool.install(|| {
                    encrypt_body(
                        &cipher,
                        &header,
                        black_box(&plaintext),
                        &mut body,
                        &no_progress,
                    )
                })
            })
        });
        group.bench_function(BenchmarkId::new("unseal", &name), |b| {
            b.iter(|| {
                pool.install(|| {
                    decrypt_body(&cipher, &header, black_box(&body), &mut out, &no_progress)
                })
                .unwrap()
            })
        });
    }
    group.finish();
}

fn license_verification(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().unwrap();
    let (identity, _) = NodeIdentity::load_or_create(&dir.path().join("node")).unwrap();
    let profile = HardwareProfile::collect(None);
    let enrollment_envelope = enrollment::create(
        &identity,
        &profile,
        &BindingChoice::default(),
        DeclaredUse::default(),
        None,
        Utc::now(),
    )
    .unwrap();
    let enrollment = enrollment::verify(enrollment_envelope.render().as_bytes()).unwrap();
    let key = ContentKey::generate();
    let header = Header {
        segment_size: header::DEFAULT_SEGMENT,
        plaintext_len: 1,
        plaintext_sha256: [0; 32],
        key_id: key.key_id(),
        nonce_prefix: [0; 7],
        model_id: "bench".into(),
    };
    let root = keyfile::read_secret_key(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/demo/root.key"),
    )
    .unwrap();
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let terms = Terms {
        licensee: "Bench Org".into(),
        not_before: t0,
        expires_at: t0 + chrono::Duration::days(3650),
        grace: chrono::Duration::zero(),
        serial: 1,
        caps: Caps::default(),
        features: vec![],
        renewal: vec![],
        issued_at: t0,
        license_id: None,
        safeguards: Default::default(),
    };
    let license = issue(&root, None, &enrollment, &header, &key, &terms)
        .unwrap()
        .render();
    let roots = TrustRoots::compiled_in();
    let public = identity.public();
    let checks = Checks {
        node: Some(&public),
        hardware: Some(&profile),
        time: TimeContext::new(Utc::now(), None),
        memory: None,
    };
    c.bench_function(
        "license_verify (parse + signature + hardware + time)",
        |b| {
            b.iter(|| {
                let verified = authenticate(black_box(license.as_bytes()), &roots).unwrap();
                evaluate(&verified.body, &checks)
            })
        },
    );
}

criterion_group!(benches, seal_unseal, license_verification);
criterion_main!(benches);
