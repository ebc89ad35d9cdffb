//! The TPM primitives of src/node/tpm.rs (the P-256 unwrap key, the sealed signing seed,
//! the NV monotonic counter, the endorsement key hash) against real software TPMs: each
//! test starts its own `swtpm` processes (socket TCTI on loopback, a fresh state
//! directory each), killed when the test ends. Timings on swtpm go to stderr
//! (`cargo test --test tpm -- --nocapture`).
#![cfg(feature = "tpm")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::swtpm::{free_port_pair, Swtpm};
use leasehold::crypto::{hpke_p256, random};
use leasehold::node::tpm::{self, NvCounter, SealedSecret, TpmError, TpmKeyBlobs, TpmUnwrapper};

fn state_dir(root: &tempfile::TempDir, name: &str) -> PathBuf {
    root.path().join(name)
}

const INFO: &[u8] = b"leasehold content key v1\0license-1\0model-1";

#[test]
fn a_secret_sealed_to_the_tpm_key_unwraps_through_the_tpm() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let blobs = tpm::create_unwrap_key(&swtpm.tcti()).unwrap();

    // Through the node-directory file, as a node would keep it.
    let file = root.path().join(tpm::KEY_FILE);
    blobs.write(&file).unwrap();
    assert!(
        blobs.write(&file).is_err(),
        "a key file is never overwritten"
    );
    let blobs = TpmKeyBlobs::read(&file).unwrap();

    let unwrapper = TpmUnwrapper::load(&swtpm.tcti(), blobs.clone()).unwrap();
    assert_eq!(unwrapper.public_point(), blobs.public_point());
    let point = unwrapper.public_point();
    assert_eq!(point[0], 0x04);

    let secret = random::bytes::<32>();
    let (enc, ciphertext) = hpke_p256::seal(&point, INFO, &secret).unwrap();

    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let opened = unwrapper.unwrap_p256(INFO, &enc, &ciphertext).unwrap();
        times.push(started.elapsed());
        assert_eq!(*opened, secret);
    }
    let first = times[0];
    times.sort();
    eprintln!(
        "tpm unwrap through swtpm (connect, SRK CreatePrimary, salted session, Load, \
         ECDH_ZGen, flush, HPKE open): first {:?}, median of 5 {:?}, min {:?}",
        first, times[2], times[0]
    );

    // Bound to its info (license and model) and to its ciphertext.
    let err = unwrapper
        .unwrap_p256(b"another license", &enc, &ciphertext)
        .unwrap_err();
    assert!(matches!(err, TpmError::NotForThisKey), "{err}");
    let mut altered = ciphertext.clone();
    altered[0] ^= 1;
    let err = unwrapper.unwrap_p256(INFO, &enc, &altered).unwrap_err();
    assert!(matches!(err, TpmError::NotForThisKey), "{err}");
    // An encapsulated key off the curve never reaches the TPM's DH.
    let mut off_curve = enc;
    off_curve[64] ^= 1;
    let err = unwrapper
        .unwrap_p256(INFO, &off_curve, &ciphertext)
        .unwrap_err();
    assert!(matches!(err, TpmError::Malformed), "{err}");
    // The TPM's transient slots are flushed after each use: many unwraps in a row work
    // (swtpm has no resource manager; a leaked object would fill its 3 slots).
    for _ in 0..8 {
        unwrapper.unwrap_p256(INFO, &enc, &ciphertext).unwrap();
    }
}

#[test]
fn the_same_p256_key_in_the_tpm_and_in_software_unwraps_to_the_same_key() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let secret_key = loop {
        let candidate = random::bytes::<32>();
        if hpke_p256::public_point(&candidate).is_ok() {
            break candidate;
        }
    };
    let point = hpke_p256::public_point(&secret_key).unwrap();

    let blobs = tpm::import_software_key(&swtpm.tcti(), &secret_key).unwrap();
    assert_eq!(blobs.public_point(), point);
    let unwrapper = TpmUnwrapper::load(&swtpm.tcti(), blobs).unwrap();

    let content_key = random::bytes::<32>();
    let (enc, ciphertext) = hpke_p256::seal(&point, INFO, &content_key).unwrap();

    let through_tpm = unwrapper.unwrap_p256(INFO, &enc, &ciphertext).unwrap();
    let dh = hpke_p256::software_dh(&secret_key, &enc).unwrap();
    let in_software = hpke_p256::open(
        &dh,
        &enc,
        &point,
        INFO,
        b"",
        &ciphertext,
        hpke_p256::Aead::Aes256Gcm,
    )
    .unwrap();
    assert_eq!(*through_tpm, content_key);
    assert_eq!(&in_software[..], &content_key[..]);
}

#[test]
fn key_blobs_copied_to_another_tpm_do_not_load_and_the_original_still_unwraps() {
    let root = tempfile::tempdir().unwrap();
    let first = Swtpm::start(&state_dir(&root, "first"));
    let second = Swtpm::start(&state_dir(&root, "second"));
    let blobs = tpm::create_unwrap_key(&first.tcti()).unwrap();
    let original = TpmUnwrapper::load(&first.tcti(), blobs.clone()).unwrap();
    let secret = random::bytes::<32>();
    let (enc, ciphertext) = hpke_p256::seal(&original.public_point(), INFO, &secret).unwrap();

    // The node directory copied to another machine: the SRK there differs.
    let err = TpmUnwrapper::load(&second.tcti(), blobs.clone()).unwrap_err();
    assert!(matches!(err, TpmError::ReEnrollmentNeeded { .. }), "{err}");
    let message = err.to_string();
    eprintln!("clone: {message}");
    assert!(message.contains("another machine's TPM"), "{message}");
    assert!(message.contains("re-enroll"), "{message}");

    // Even with the recorded SRK point forged to the second TPM's, the second TPM itself
    // refuses the private blob (it is encrypted under the first TPM's storage seed).
    let second_srk = {
        let other = tpm::create_unwrap_key(&second.tcti()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&other.to_file_bytes()).unwrap();
        json["parent_point"].as_str().unwrap().to_string()
    };
    let mut json: serde_json::Value = serde_json::from_slice(&blobs.to_file_bytes()).unwrap();
    json["parent_point"] = serde_json::Value::String(second_srk);
    let forged =
        TpmKeyBlobs::from_file_bytes("forged", &serde_json::to_vec(&json).unwrap()).unwrap();
    let err = TpmUnwrapper::load(&second.tcti(), forged).unwrap_err();
    assert!(matches!(err, TpmError::ReEnrollmentNeeded { .. }), "{err}");
    assert!(err.to_string().contains("TPM2_Load"), "{err}");

    // The original machine keeps unwrapping.
    assert_eq!(
        *original.unwrap_p256(INFO, &enc, &ciphertext).unwrap(),
        secret
    );
}

#[test]
fn a_cleared_tpm_says_the_node_must_be_re_enrolled() {
    let root = tempfile::tempdir().unwrap();
    let state = state_dir(&root, "tpm");
    let blobs = {
        let swtpm = Swtpm::start(&state);
        let blobs = tpm::create_unwrap_key(&swtpm.tcti()).unwrap();
        TpmUnwrapper::load(&swtpm.tcti(), blobs.clone()).unwrap();
        blobs
    };
    // The TPM's state removed: new seeds, as after TPM2_Clear.
    std::fs::remove_dir_all(&state).unwrap();
    let swtpm = Swtpm::start(&state);
    let err = TpmUnwrapper::load(&swtpm.tcti(), blobs).unwrap_err();
    assert!(matches!(err, TpmError::ReEnrollmentNeeded { .. }), "{err}");
    let message = err.to_string();
    eprintln!("cleared: {message}");
    assert!(message.contains("cleared"), "{message}");
    assert!(message.contains("re-enroll this node"), "{message}");
}

#[test]
fn no_tpm_at_the_tcti_is_a_clear_error() {
    let port = free_port_pair();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let err = tpm::open_context(&tcti).expect_err("nothing listens there");
    eprintln!("no TPM: {err}");
    assert!(matches!(err, TpmError::NotPresent { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("no TPM at {tcti}")),
        "{err}"
    );

    let err = tpm::create_unwrap_key(&tcti).unwrap_err();
    assert!(matches!(err, TpmError::NotPresent { .. }), "{err}");

    let err = tpm::create_unwrap_key("device:/nonexistent/tpmrm0").unwrap_err();
    assert!(matches!(err, TpmError::NotPresent { .. }), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    assert_eq!(tpm::select_tcti(Some(&tcti)), tcti);
}

#[test]
fn a_tpm_in_dictionary_attack_lockout_is_named() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let blobs = tpm::create_unwrap_key(&swtpm.tcti()).unwrap();
    let unwrapper = TpmUnwrapper::load(&swtpm.tcti(), blobs).unwrap();
    let secret = random::bytes::<32>();
    let (enc, ciphertext) = hpke_p256::seal(&unwrapper.public_point(), INFO, &secret).unwrap();
    assert_eq!(
        *unwrapper.unwrap_p256(INFO, &enc, &ciphertext).unwrap(),
        secret
    );

    // Three wrong authorization values (swtpm's default maxTries) on a DA-protected key
    // of the same TPM put it into dictionary-attack lockout.
    put_into_lockout(&swtpm.tcti());

    let err = unwrapper.unwrap_p256(INFO, &enc, &ciphertext).unwrap_err();
    eprintln!("lockout: {err}");
    assert!(matches!(err, TpmError::Lockout), "{err}");
    assert!(err.to_string().contains("lockout"), "{err}");
}

/// Fail authorization on a DA-protected ECDH primary key until the TPM locks out.
fn put_into_lockout(tcti: &str) {
    use std::str::FromStr;
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm},
        ecc::EccCurve,
        resource_handles::Hierarchy,
        session_handles::AuthSession,
    };
    use tss_esapi::structures::{
        Auth, EccPoint, EccScheme, KeyDerivationFunctionScheme, PublicBuilder,
        PublicEccParametersBuilder, SymmetricDefinitionObject,
    };

    let mut ctx =
        tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti).unwrap())
            .unwrap();
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .build()
        .unwrap();
    let public = PublicBuilder::new()
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
                .build()
                .unwrap(),
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .unwrap();
    let key = ctx
        .create_primary(
            Hierarchy::Owner,
            public,
            Some(Auth::try_from(b"right".to_vec()).unwrap()),
            None,
            None,
            None,
        )
        .unwrap()
        .key_handle;
    let (_, point) = ctx
        .execute_without_session(|ctx| ctx.ecdh_key_gen(key))
        .unwrap();
    ctx.tr_set_auth(key.into(), Auth::try_from(b"wrong".to_vec()).unwrap())
        .unwrap();
    let mut locked = false;
    for _ in 0..10 {
        let err = ctx.ecdh_z_gen(key, point.clone()).unwrap_err();
        if err.to_string().contains("lockout") {
            locked = true;
            break;
        }
    }
    ctx.flush_context(key.into()).unwrap();
    assert!(locked, "the TPM did not lock out");
}

/// Run `f`, print how long it took under `label`, and return its result.
fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = f();
    eprintln!("swtpm timing: {label}: {:?}", started.elapsed());
    result
}

#[test]
fn a_seed_sealed_to_the_tpm_unseals_there_and_nowhere_else() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let other = Swtpm::start(&state_dir(&root, "other"));
    let seed = random::bytes::<32>();
    let sealed = timed(
        "seal_secret (connect, SRK CreatePrimary, salted session, Create, flush)",
        || tpm::seal_secret(&swtpm.tcti(), &seed),
    )
    .unwrap();

    // Through the node-directory file, as a node would keep it.
    let file = root.path().join(tpm::SEALED_SIGNING_KEY_FILE);
    sealed.write(&file).unwrap();
    assert!(
        sealed.write(&file).is_err(),
        "a sealed key file is never overwritten"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(json["format"], tpm::SEALED_SIGNING_KEY_FORMAT);
    assert!(!std::fs::read_to_string(&file)
        .unwrap()
        .contains(&hex::encode(seed)));
    let sealed = SealedSecret::read(&file).unwrap();

    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let unsealed = sealed.unseal(&swtpm.tcti()).unwrap();
        times.push(started.elapsed());
        assert_eq!(*unsealed, seed);
    }
    let first = times[0];
    times.sort();
    eprintln!(
        "swtpm timing: unseal (connect, SRK CreatePrimary, salted session, Load, Unseal, \
         flush): first {first:?}, median of 5 {:?}, min {:?}",
        times[2], times[0]
    );
    // Everything is flushed after each use: swtpm has 3 transient slots and no resource
    // manager.
    for _ in 0..8 {
        sealed.unseal(&swtpm.tcti()).unwrap();
    }

    // The node directory copied to another machine.
    let err = sealed.unseal(&other.tcti()).unwrap_err();
    eprintln!("sealed key on another TPM: {err}");
    assert!(matches!(err, TpmError::ReEnrollmentNeeded { .. }), "{err}");
    assert!(err.to_string().contains("another machine's TPM"), "{err}");
    // With its recorded SRK point forged to the other TPM's, that TPM itself refuses it.
    let other_srk = {
        let theirs = tpm::seal_secret(&other.tcti(), &seed).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&theirs.to_file_bytes()).unwrap();
        json["parent_point"].as_str().unwrap().to_string()
    };
    let mut json = json;
    json["parent_point"] = serde_json::Value::String(other_srk);
    let forged =
        SealedSecret::from_file_bytes("forged", &serde_json::to_vec(&json).unwrap()).unwrap();
    let err = forged.unseal(&other.tcti()).unwrap_err();
    assert!(matches!(err, TpmError::ReEnrollmentNeeded { .. }), "{err}");
    assert!(err.to_string().contains("TPM2_Load"), "{err}");

    // The two node-directory files are not mistaken for each other.
    let key_file = root.path().join(tpm::KEY_FILE);
    tpm::create_unwrap_key(&swtpm.tcti())
        .unwrap()
        .write(&key_file)
        .unwrap();
    let err = SealedSecret::read(&key_file).unwrap_err();
    assert!(matches!(err, TpmError::BadKeyFile { .. }), "{err}");
    let err = TpmKeyBlobs::read(&file).unwrap_err();
    assert!(matches!(err, TpmError::BadKeyFile { .. }), "{err}");

    // The original machine keeps unsealing.
    assert_eq!(*sealed.unseal(&swtpm.tcti()).unwrap(), seed);
}

#[test]
fn a_sealed_seed_does_not_unseal_after_the_tpm_is_cleared() {
    let root = tempfile::tempdir().unwrap();
    let state = state_dir(&root, "tpm");
    let seed = random::bytes::<32>();
    let sealed = {
        let swtpm = Swtpm::start(&state);
        let sealed = tpm::seal_secret(&swtpm.tcti(), &seed).unwrap();
        assert_eq!(*sealed.unseal(&swtpm.tcti()).unwrap(), seed);
        sealed
    };
    // Restarted with its state: still unseals.
    {
        let swtpm = Swtpm::start(&state);
        assert_eq!(*sealed.unseal(&swtpm.tcti()).unwrap(), seed);
    }
    std::fs::remove_dir_all(&state).unwrap();
    let swtpm = Swtpm::start(&state);
    let err = sealed.unseal(&swtpm.tcti()).unwrap_err();
    eprintln!("sealed key on a cleared TPM: {err}");
    assert!(matches!(err, TpmError::ReEnrollmentNeeded { .. }), "{err}");
    assert!(err.to_string().contains("re-enroll this node"), "{err}");
}

#[test]
fn a_counter_only_moves_forward() {
    let root = tempfile::tempdir().unwrap();
    let state = state_dir(&root, "tpm");
    let swtpm = Swtpm::start(&state);
    let counter = timed(
        "create_counter (NV_DefineSpace, first NV_Increment)",
        || tpm::create_counter(&swtpm.tcti()),
    )
    .unwrap();
    assert!(
        tpm::COUNTER_INDEX_RANGE.contains(&counter.index),
        "{:#x}",
        counter.index
    );
    let first = timed("counter read (NV_ReadPublic, NV_Read)", || {
        counter.read(&swtpm.tcti())
    })
    .unwrap();
    // A fresh TPM whose counters never existed: the first write makes it 1.
    assert_eq!(first, 1);

    let mut value = first;
    let mut times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let after = counter.increment(&swtpm.tcti()).unwrap();
        times.push(started.elapsed());
        assert_eq!(after, value + 1);
        value = after;
    }
    times.sort();
    eprintln!(
        "swtpm timing: counter increment (NV_ReadPublic, NV_Increment, NV_Read): \
         median of 10 {:?}, min {:?}, max {:?}",
        times[5], times[0], times[9]
    );
    assert_eq!(counter.read(&swtpm.tcti()).unwrap(), value);

    // Two counters on one TPM are independent indices.
    let second = tpm::create_counter(&swtpm.tcti()).unwrap();
    assert_ne!(second.index, counter.index);
    second.increment(&swtpm.tcti()).unwrap();
    assert_eq!(counter.read(&swtpm.tcti()).unwrap(), value);

    // The counter lives in the TPM's NV: it survives a restart.
    swtpm.stop();
    let swtpm = Swtpm::start(&state);
    assert_eq!(counter.read(&swtpm.tcti()).unwrap(), value);
    assert_eq!(counter.increment(&swtpm.tcti()).unwrap(), value + 1);
}

#[test]
fn a_counter_redefined_at_its_handle_does_not_start_lower() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let tcti = swtpm.tcti();
    let counter = tpm::create_counter(&tcti).unwrap();
    for _ in 0..20 {
        counter.increment(&tcti).unwrap();
    }
    let old = counter.read(&tcti).unwrap();
    assert_eq!(old, 21);

    // The operator deletes the counter (as a backup restore would want)...
    undefine(&tcti, counter.index);
    let err = counter.read(&tcti).unwrap_err();
    eprintln!("deleted counter: {err}");
    assert!(matches!(err, TpmError::CounterGone { .. }), "{err}");
    // ...and defines a new one at the same handle (with the password from counter.tpm,
    // which root can read).
    define(
        &tcti,
        counter.index,
        tss_esapi::constants::NvIndexType::Counter,
        &counter.auth,
    );
    let err = counter.read(&tcti).unwrap_err();
    eprintln!("redefined counter, never written: {err}");
    assert!(err.to_string().contains("never incremented"), "{err}");
    let new = counter.increment(&tcti).unwrap();
    eprintln!(
        "counter redefined at {:#010x}: old value {old}, new counter's first value {new}",
        counter.index
    );
    assert!(
        new >= old,
        "swtpm started a redefined counter at {new}, below the deleted one's {old}: \
         TPM 2.0 Part 1 requires a new counter to start at least at the largest value any \
         counter has had, and the rollback defence relies on it"
    );
}

#[test]
fn an_ordinary_nv_index_at_the_counter_handle_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let tcti = swtpm.tcti();
    let counter = tpm::create_counter(&tcti).unwrap();
    counter.increment(&tcti).unwrap();
    undefine(&tcti, counter.index);
    // An ordinary index at the same handle, which its owner can write at will.
    define(
        &tcti,
        counter.index,
        tss_esapi::constants::NvIndexType::Ordinary,
        &counter.auth,
    );
    for err in [
        counter.read(&tcti).unwrap_err(),
        counter.increment(&tcti).unwrap_err(),
    ] {
        eprintln!("ordinary index: {err}");
        assert!(matches!(err, TpmError::NotACounter { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("not a monotonic counter"), "{message}");
        assert!(message.contains("ordinary"), "{message}");
        assert!(message.contains("re-enroll"), "{message}");
    }
    // An index outside the NV range is named, not sent.
    let err = NvCounter {
        index: 0x8100_0001,
        auth: [0; tpm::COUNTER_AUTH_LEN],
    }
    .read(&tcti)
    .unwrap_err();
    assert!(err.to_string().contains("not an NV index handle"), "{err}");
}

#[test]
fn another_user_of_the_tpm_cannot_move_a_counter_without_its_password() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let tcti = swtpm.tcti();
    let counter = tpm::create_counter(&tcti).unwrap();
    let value = counter.read(&tcti).unwrap();
    let nvincrement = |password: Option<String>| {
        let mut command = Command::new("tpm2_nvincrement");
        command
            .arg("-T")
            .arg(&tcti)
            .arg(format!("{:#010x}", counter.index));
        if let Some(p) = password {
            command.args(["-P", &p]);
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("tpm2_nvincrement runs (scripts/setup.sh --test installs tpm2-tools)")
    };
    // Another process with access to the TPM, without the password: refused.
    assert!(!nvincrement(None).success());
    assert!(!nvincrement(Some("hex:00".into())).success());
    assert_eq!(counter.read(&tcti).unwrap(), value);
    // With the password from counter.tpm (root can read it): it moves.
    assert!(nvincrement(Some(format!("hex:{}", hex::encode(counter.auth)))).success());
    assert_eq!(counter.read(&tcti).unwrap(), value + 1);

    // A counter file with another password is named, not taken for a TPM failure.
    let wrong = NvCounter {
        auth: [0x55; tpm::COUNTER_AUTH_LEN],
        ..counter
    };
    for err in [
        wrong.read(&tcti).unwrap_err(),
        wrong.increment(&tcti).unwrap_err(),
    ] {
        assert!(matches!(err, TpmError::CounterPassword { .. }), "{err}");
        assert!(err.to_string().contains("counter.tpm"), "{err}");
    }
    assert_eq!(counter.read(&tcti).unwrap(), value + 1);
}

#[test]
fn a_counter_on_a_cleared_tpm_is_gone() {
    let root = tempfile::tempdir().unwrap();
    let state = state_dir(&root, "tpm");
    let counter = {
        let swtpm = Swtpm::start(&state);
        let counter = tpm::create_counter(&swtpm.tcti()).unwrap();
        counter.increment(&swtpm.tcti()).unwrap();
        counter
    };
    std::fs::remove_dir_all(&state).unwrap();
    let swtpm = Swtpm::start(&state);
    for err in [
        counter.read(&swtpm.tcti()).unwrap_err(),
        counter.increment(&swtpm.tcti()).unwrap_err(),
    ] {
        eprintln!("cleared: {err}");
        assert!(matches!(err, TpmError::CounterGone { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("counter for this node"), "{message}");
        assert!(message.contains("is gone"), "{message}");
        assert!(message.contains("TPM was cleared"), "{message}");
        assert!(message.contains("re-enroll"), "{message}");
    }
}

#[test]
fn the_endorsement_key_hash_is_stable_per_tpm_and_differs_between_tpms() {
    let root = tempfile::tempdir().unwrap();
    let state = state_dir(&root, "first");
    let first = Swtpm::start(&state);
    let second = Swtpm::start(&state_dir(&root, "second"));
    let hash = timed(
        "endorsement_key_sha256 (connect, ECC P-256 EK CreatePrimary, flush)",
        || tpm::endorsement_key_sha256(&first.tcti()),
    )
    .unwrap();
    for _ in 0..2 {
        let again = timed("endorsement_key_sha256 again", || {
            tpm::endorsement_key_sha256(&first.tcti())
        })
        .unwrap();
        assert_eq!(again, hash);
    }
    eprintln!("tpm-ek of the first swtpm: {}", hex::encode(hash));

    // Another process: tpm2-tools' EK from the same default template, as a TPM2B_PUBLIC;
    // the hash covers the TPMT_PUBLIC inside it.
    let public = root.path().join("ek.pub");
    let context = root.path().join("ek.ctx");
    let status = Command::new("tpm2_createek")
        .arg("-T")
        .arg(first.tcti())
        .args(["-G", "ecc", "-f", "tss"])
        .arg("-u")
        .arg(&public)
        .arg("-c")
        .arg(&context)
        .stdout(Stdio::null())
        .status()
        .expect("tpm2_createek runs (scripts/setup.sh --test installs tpm2-tools)");
    assert!(status.success());
    let tpm2b_public = std::fs::read(&public).unwrap();
    let length = usize::from(u16::from_be_bytes([tpm2b_public[0], tpm2b_public[1]]));
    assert_eq!(length + 2, tpm2b_public.len());
    let theirs: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&tpm2b_public[2..]).into()
    };
    assert_eq!(theirs, hash, "the hash of tpm2_createek's EK differs");

    let other = tpm::endorsement_key_sha256(&second.tcti()).unwrap();
    assert_ne!(other, hash);

    // The endorsement seed lives in the TPM's state: a restart keeps the hash.
    first.stop();
    let first = Swtpm::start(&state);
    assert_eq!(tpm::endorsement_key_sha256(&first.tcti()).unwrap(), hash);
}

#[test]
fn a_hierarchy_password_is_named() {
    use tss_esapi::handles::AuthHandle;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::Auth;

    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let tcti = swtpm.tcti();
    {
        let mut ctx = raw_context(&tcti);
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        for hierarchy in [AuthHandle::Owner, AuthHandle::Endorsement] {
            ctx.hierarchy_change_auth(hierarchy, Auth::try_from(b"secret".to_vec()).unwrap())
                .unwrap();
        }
    }
    let err = tpm::create_counter(&tcti).unwrap_err();
    eprintln!("owner password: {err}");
    assert!(matches!(err, TpmError::HierarchyPassword { .. }), "{err}");
    assert!(err.to_string().contains("owner hierarchy"), "{err}");
    let err = tpm::endorsement_key_sha256(&tcti).unwrap_err();
    eprintln!("endorsement password: {err}");
    assert!(matches!(err, TpmError::HierarchyPassword { .. }), "{err}");
    assert!(err.to_string().contains("endorsement hierarchy"), "{err}");
}

/// A relay between a TCTI client and a swtpm that records everything on the command
/// channel, both ways: what a bus sniffer sees.
struct Sniffer {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Sniffer {
    fn start(swtpm: &Swtpm) -> Sniffer {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};

        let (command, control) = loop {
            let first = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = first.local_addr().unwrap().port();
            if port < u16::MAX {
                if let Ok(second) = TcpListener::bind(("127.0.0.1", port + 1)) {
                    break (first, second);
                }
            }
        };
        let port = command.local_addr().unwrap().port();
        let target: u16 = swtpm
            .tcti()
            .rsplit_once("port=")
            .and_then(|(_, port)| port.parse().ok())
            .expect("a swtpm TCTI names its port");
        let seen = Arc::new(Mutex::new(Vec::new()));
        for (listener, target, record) in [
            (command, target, Some(seen.clone())),
            (control, target + 1, None),
        ] {
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { return };
                    let upstream = TcpStream::connect(("127.0.0.1", target)).unwrap();
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                        (upstream, client),
                    ] {
                        let record = record.clone();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while let Ok(n @ 1..) = from.read(&mut buf) {
                                if let Some(seen) = &record {
                                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                                }
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
            });
        }
        Sniffer { port, seen }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Whether `needle` went over the wire, either way, in clear.
    fn saw(&self, needle: &[u8]) -> bool {
        self.seen
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }

    fn bytes_seen(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[test]
fn the_sealed_seed_never_crosses_the_bus_in_clear() {
    let root = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
    let sniffer = Sniffer::start(&swtpm);
    let tcti = sniffer.tcti();
    let seed = random::bytes::<32>();
    let sealed = tpm::seal_secret(&tcti, &seed).unwrap();
    assert_eq!(*sealed.unseal(&tcti).unwrap(), seed);
    assert!(sniffer.bytes_seen() > 1000, "the relay saw the traffic");
    assert!(
        !sniffer.saw(&seed),
        "the seed went over the wire in clear (TPM2_Create's command or TPM2_Unseal's response)"
    );

    // The control: what goes over without parameter encryption is seen in clear.
    let index = 0x0100_0ABC;
    define(
        &tcti,
        index,
        tss_esapi::constants::NvIndexType::Ordinary,
        &[],
    );
    let mut ctx = raw_context(&tcti);
    let handle = tss_esapi::handles::NvIndexHandle::from(
        ctx.tr_from_tpm_public(
            tss_esapi::handles::NvIndexTpmHandle::new(index)
                .unwrap()
                .into(),
        )
        .unwrap(),
    );
    ctx.execute_with_session(
        Some(tss_esapi::interface_types::session_handles::AuthSession::Password),
        |ctx| {
            ctx.nv_write(
                tss_esapi::interface_types::resource_handles::NvAuth::NvIndex(handle),
                handle,
                tss_esapi::structures::MaxNvBuffer::try_from(seed[..8].to_vec()).unwrap(),
                0,
            )
        },
    )
    .unwrap();
    assert!(sniffer.saw(&seed[..8]), "the relay sees payloads in clear");
}

fn raw_context(tcti: &str) -> tss_esapi::Context {
    use std::str::FromStr;
    tss_esapi::Context::new(tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti).unwrap()).unwrap()
}

/// Delete the NV index `index` with the owner's (empty) authorization, as tpm2_nvundefine.
fn undefine(tcti: &str, index: u32) {
    use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle};
    use tss_esapi::interface_types::{resource_handles::Provision, session_handles::AuthSession};

    let mut ctx = raw_context(tcti);
    let handle = ctx
        .tr_from_tpm_public(NvIndexTpmHandle::new(index).unwrap().into())
        .unwrap();
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.nv_undefine_space(Provision::Owner, NvIndexHandle::from(handle))
    })
    .unwrap();
}

/// Define an 8-byte NV index of `kind` at `index` (owner authorization, index password
/// `auth`), as tpm2_nvdefine; an ordinary one is written with zeros.
fn define(tcti: &str, index: u32, kind: tss_esapi::constants::NvIndexType, auth: &[u8]) {
    use tss_esapi::attributes::NvIndexAttributesBuilder;
    use tss_esapi::handles::NvIndexTpmHandle;
    use tss_esapi::interface_types::{
        algorithm::HashingAlgorithm,
        resource_handles::{NvAuth, Provision},
        session_handles::AuthSession,
    };
    use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};

    let mut ctx = raw_context(tcti);
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(kind)
        .with_auth_write(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()
        .unwrap();
    let public = NvPublicBuilder::new()
        .with_nv_index(NvIndexTpmHandle::new(index).unwrap())
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(8)
        .build()
        .unwrap();
    let password = tss_esapi::structures::Auth::try_from(auth.to_vec()).unwrap();
    let handle = ctx
        .nv_define_space(Provision::Owner, Some(password.clone()), public)
        .unwrap();
    ctx.tr_set_auth(handle.into(), password).unwrap();
    if kind == tss_esapi::constants::NvIndexType::Ordinary {
        ctx.nv_write(
            NvAuth::NvIndex(handle),
            handle,
            MaxNvBuffer::try_from(vec![0u8; 8]).unwrap(),
            0,
        )
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The node state anchored in the TPM: its counter and Clock (src/node/trusted_time.rs).

mod anchored_state {
    use super::*;
    use chrono::{Duration, Utc};
    use leasehold::format::Envelope;
    use leasehold::node::identity::{UnwrapKeyStore, TPM_COUNTER_FILE};
    use leasehold::node::trusted_time::{self, NodeStateBody, StateError};
    use leasehold::node::NodeIdentity;

    /// A TPM node directory on `swtpm`, its state created.
    fn tpm_node(root: &tempfile::TempDir, swtpm: &Swtpm) -> NodeIdentity {
        let store = UnwrapKeyStore::Tpm { tcti: swtpm.tcti() };
        let (identity, created) =
            NodeIdentity::load_or_create_with(&root.path().join("node"), &store).unwrap();
        assert!(created);
        assert!(identity.dir().join(TPM_COUNTER_FILE).exists());
        trusted_time::create(&identity, Utc::now()).unwrap();
        identity
    }

    fn state_bytes(identity: &NodeIdentity) -> Vec<u8> {
        std::fs::read(identity.dir().join(trusted_time::STATE_FILE)).unwrap()
    }

    fn put_state(identity: &NodeIdentity, bytes: &[u8]) {
        std::fs::write(identity.dir().join(trusted_time::STATE_FILE), bytes).unwrap();
    }

    fn on_disk(identity: &NodeIdentity) -> NodeStateBody {
        trusted_time::read_signed(identity.dir(), &identity.public())
            .unwrap()
            .unwrap()
    }

    fn tpm_counter(identity: &NodeIdentity) -> u64 {
        identity.state_anchor().unwrap().read().unwrap().counter
    }

    /// Sign `body` as the node and put it in place of the state.
    fn forge(identity: &NodeIdentity, body: &NodeStateBody) {
        let envelope = Envelope::sign(body, identity.signer(), vec![]);
        put_state(identity, envelope.render().as_bytes());
    }

    #[test]
    fn each_state_write_moves_the_counter_and_an_older_state_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
        let node = tpm_node(&root, &swtpm);
        let created = on_disk(&node);
        let mark = created
            .tpm
            .expect("a TPM node's state carries its TPM mark");
        assert_eq!(mark.nv_index, node.state_anchor().unwrap().nv_index());
        assert_eq!(mark.counter, tpm_counter(&node));

        let backup = state_bytes(&node);
        let written = timed(
            "state write on a TPM node (read, sign, write, increment)",
            || trusted_time::update(&node, |s| s.note_serial("license-a", 1)).unwrap(),
        );
        assert_eq!(written.seen("license-a").unwrap().serial, 1);
        assert_eq!(tpm_counter(&node), mark.counter + 1);
        assert_eq!(on_disk(&node).tpm.unwrap().counter, mark.counter + 1);

        // The operator restores the state from before the write.
        put_state(&node, &backup);
        let err = trusted_time::load(&node).unwrap_err();
        match &err {
            StateError::RolledBack {
                state_counter,
                tpm_counter,
                ..
            } => assert_eq!(
                (*state_counter, *tpm_counter),
                (mark.counter, mark.counter + 1)
            ),
            other => panic!("not refused as rolled back: {other}"),
        }
        let message = err.to_string();
        assert!(message.contains("rolled back"), "{message}");
        assert!(message.contains("restored backup"), "{message}");
        // Writes are refused too: the restored file is never built upon.
        assert!(matches!(
            trusted_time::update(&node, |s| s.note_serial("license-a", 2)),
            Err(StateError::RolledBack { .. })
        ));
    }

    #[test]
    fn between_writes_the_mark_moves_with_the_tpm_clock_and_small_moves_write_nothing() {
        let root = tempfile::tempdir().unwrap();
        let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
        let node = tpm_node(&root, &swtpm);
        let before = on_disk(&node);
        let counter = tpm_counter(&node);

        std::thread::sleep(std::time::Duration::from_millis(3600));
        let loaded = trusted_time::load(&node).unwrap().unwrap();
        let moved = loaded.high_water - before.high_water;
        assert!(
            moved >= Duration::seconds(3) && moved <= Duration::seconds(6),
            "the mark moved {moved} in 3.6 s of TPM Clock (17/20 credited: 3.06 s)"
        );

        // A heartbeat inside the slack: the TPM's Clock already implies it.
        let bytes = state_bytes(&node);
        trusted_time::update(&node, |s| {
            s.raise(loaded.high_water + Duration::seconds(30))
        })
        .unwrap();
        assert_eq!(state_bytes(&node), bytes, "nothing written");
        assert_eq!(tpm_counter(&node), counter, "the counter did not move");

        // Beyond it (the wall clock after the machine was off): written, counted.
        let later = loaded.high_water + Duration::minutes(10);
        let now = trusted_time::record(&node, later).unwrap();
        assert_eq!(now, leasehold::format::time::whole_seconds(later));
        assert_eq!(tpm_counter(&node), counter + 1);
        assert_eq!(on_disk(&node).high_water, now);
    }

    #[test]
    fn a_write_whose_increment_never_happened_is_accepted_and_caught_up() {
        let root = tempfile::tempdir().unwrap();
        let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
        let node = tpm_node(&root, &swtpm);
        let counter = tpm_counter(&node);

        // The file of a write that crashed before its increment: one ahead of the TPM.
        let mut pending = on_disk(&node);
        pending.note_serial("license-a", 3);
        pending.tpm.as_mut().unwrap().counter = counter + 1;
        forge(&node, &pending);
        let loaded = trusted_time::load(&node).unwrap().unwrap();
        assert_eq!(loaded.seen("license-a").unwrap().serial, 3);

        trusted_time::update(&node, |s| s.note_serial("license-a", 4)).unwrap();
        assert_eq!(tpm_counter(&node), counter + 2, "caught up, then counted");
        assert_eq!(on_disk(&node).tpm.unwrap().counter, counter + 2);
        trusted_time::load(&node).unwrap().unwrap();

        // Two ahead is no crash: the counter is not the one the state was written with.
        let mut ahead = on_disk(&node);
        ahead.tpm.as_mut().unwrap().counter += 2;
        forge(&node, &ahead);
        let err = trusted_time::load(&node).unwrap_err();
        assert!(matches!(err, StateError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("ahead of the TPM"), "{err}");

        // A state without its TPM mark, or naming another counter, is not this node's.
        let mut unmarked = on_disk(&node);
        unmarked.tpm = None;
        forge(&node, &unmarked);
        let err = trusted_time::load(&node).unwrap_err();
        assert!(err.to_string().contains("carries no TPM counter"), "{err}");
        let mut other = ahead.clone();
        other.tpm.as_mut().unwrap().nv_index ^= 1;
        forge(&node, &other);
        let err = trusted_time::load(&node).unwrap_err();
        assert!(err.to_string().contains("not this node's"), "{err}");
    }

    #[test]
    fn a_tpm_node_without_its_counter_file_is_incomplete() {
        let root = tempfile::tempdir().unwrap();
        let swtpm = Swtpm::start(&state_dir(&root, "tpm"));
        let node = tpm_node(&root, &swtpm);
        std::fs::remove_file(node.dir().join(TPM_COUNTER_FILE)).unwrap();
        let err = NodeIdentity::load(node.dir()).err().unwrap();
        assert!(err.to_string().contains("counter.tpm"), "{err}");
    }
}
