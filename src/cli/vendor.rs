//! Vendor commands: keygen, seal, issue, certify-issuer.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::{
    exit, progress, CertifyIssuerArgs, IssueArgs, KeygenArgs, Outcome, SafeguardArgs, SealArgs,
};
use crate::crypto::keyfile::{self, KeyKind};
use crate::crypto::signing::SecretKey;
use crate::crypto::ContentKey;
use crate::format::time::{parse_duration, parse_instant, rfc3339};
use crate::format::{DocumentKind, Envelope};
use crate::fsutil::{self, Replace};
use crate::license::issue::{self as issuing, Safeguards, Terms};
use crate::license::verify::authenticate;
use crate::license::{Caps, FilterRules, IssuerCertBody, TrustRoots, Verdict};
use crate::node::{clock, enrollment};
use crate::seal::{self, SealedModel};
use crate::watermark;

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn keygen(args: KeygenArgs) -> Outcome {
    let secret_path = with_suffix(&args.out, ".key");
    let public_path = with_suffix(&args.out, ".pub");
    for p in [&secret_path, &public_path] {
        if p.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key (choose another --out prefix)",
                p.display()
            );
        }
    }
    let key = SecretKey::generate();
    let id = key.public_key().key_id();
    keyfile::write(
        &secret_path,
        KeyKind::Ed25519Secret,
        &key.to_bytes(),
        &format!("leasehold Ed25519 secret key {id}; keep it offline and private"),
    )?;
    keyfile::write(
        &public_path,
        KeyKind::Ed25519Public,
        &key.public_key().to_bytes(),
        &format!("leasehold Ed25519 public key {id}"),
    )?;
    println!(
        "wrote {} (secret, mode 0600) and {}",
        secret_path.display(),
        public_path.display()
    );
    println!("key id {id}");
    Ok(exit::OK)
}

pub fn seal(args: SealArgs) -> Outcome {
    if args.key_out.exists() {
        bail!(
            "{} already exists; refusing to overwrite a content key (a sealed model whose key is lost cannot be opened)",
            args.key_out.display()
        );
    }
    let size = std::fs::metadata(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?
        .len();
    let key = ContentKey::generate();
    let bar = progress::bytes(size, "sealing");
    let started = crate::node::clock::monotonic_now();
    let key_out = args.key_out.clone();
    let model_id = args.model_id.clone();
    let header = seal::seal_file(
        &args.model,
        &args.model_id,
        &args.out,
        &key,
        args.segment_size,
        &|n| bar.inc(n),
        || {
            keyfile::write(
                &key_out,
                KeyKind::ContentKey,
                key.as_bytes(),
                &format!("leasehold content key for model {model_id}; secret: whoever holds it can decrypt the model"),
            )
        },
    )?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("sealed {} -> {}", args.model.display(), args.out.display());
    println!("  model id          {}", header.model_id);
    println!(
        "  plaintext         {} bytes, sha256 {}",
        header.plaintext_len,
        hex::encode(header.plaintext_sha256)
    );
    println!(
        "  segments          {} of {} bytes",
        header.segment_count(),
        header.segment_size
    );
    println!("  header sha256     {}", hex::encode(header.digest()));
    println!(
        "  content key       {} (id {}, mode 0600)",
        args.key_out.display(),
        hex::encode(header.key_id)
    );
    println!(
        "  took              {secs:.2} s ({:.0} MB/s)",
        header.plaintext_len as f64 / secs / 1e6
    );
    Ok(exit::OK)
}

fn read_document(path: &Path, what: &'static str) -> anyhow::Result<Vec<u8>> {
    Ok(fsutil::read_limited(
        path,
        crate::format::envelope::MAX_DOCUMENT_BYTES,
        what,
    )?)
}

/// Read `--watermark` and `--filter-rules` (for `issue` and `admin entitle`).
pub fn safeguards(args: &SafeguardArgs) -> anyhow::Result<Safeguards> {
    let watermark = match &args.watermark {
        None => None,
        Some(text) => Some(
            watermark::Params::parse(text)
                .map_err(|e| anyhow::anyhow!("--watermark {text}: {e}"))?,
        ),
    };
    let output_filter = match &args.filter_rules {
        None => None,
        Some(path) => {
            let text = fsutil::read_limited(path, 1 << 20, "filter rules")?;
            let text = String::from_utf8(text)
                .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
            // Validity (bounded, non-empty rules) is checked where the terms are used:
            // when the license is signed, or by the license server for an entitlement.
            Some(
                FilterRules::parse_toml(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )
        }
    };
    Ok(Safeguards {
        watermark,
        output_filter,
    })
}

pub fn issue(args: IssueArgs) -> Outcome {
    let now = clock::system_now();
    let signer = keyfile::read_secret_key(&args.key)?;
    let chain = match &args.issuer_cert {
        None => None,
        Some(path) => Some(
            Envelope::parse(
                &read_document(path, "issuer certificate")?,
                DocumentKind::IssuerCertificate,
            )
            .with_context(|| format!("{} is not a valid issuer certificate", path.display()))?,
        ),
    };
    let enrollment_bytes = read_document(&args.enrollment, "enrollment")?;
    let enrollment = enrollment::verify(&enrollment_bytes)
        .with_context(|| format!("{} cannot be used", args.enrollment.display()))?;
    let sealed = SealedModel::open(&args.sealed)?;
    let content_key =
        ContentKey::from_bytes(*keyfile::read(&args.content_key, KeyKind::ContentKey)?);
    let mut caps = Caps::default();
    for spec in &args.caps {
        caps.set(spec).map_err(anyhow::Error::msg)?;
    }
    let not_before = match &args.not_before {
        Some(t) => parse_instant(t, now).map_err(anyhow::Error::msg)?,
        None => now,
    };
    let terms = Terms {
        licensee: args.licensee.clone(),
        not_before,
        expires_at: parse_instant(&args.expires, now).map_err(anyhow::Error::msg)?,
        grace: parse_duration(&args.grace).map_err(anyhow::Error::msg)?,
        serial: args.serial.unwrap_or(now.timestamp_millis().max(0) as u64),
        caps,
        features: Vec::new(),
        renewal: args.renewal.clone(),
        issued_at: now,
        license_id: args.license_id.clone(),
        safeguards: safeguards(&args.safeguards)?,
    };
    let license = issuing::issue(
        &signer,
        chain,
        &enrollment,
        sealed.header(),
        &content_key,
        &terms,
    )?;
    let text = license.render();

    // Refuse to hand out a license this build would itself refuse.
    match authenticate(text.as_bytes(), &TrustRoots::compiled_in()) {
        Ok(_) => {}
        Err(Verdict::UnknownIssuer { key_id }) => bail!(
            "key {key_id} is not a root compiled into this build{}; a license it signs would be refused. \
             Sign with the root key, or with an issuer key and its --issuer-cert",
            if args.issuer_cert.is_some() { " and the certificate does not chain to one" } else { "" }
        ),
        Err(other) => bail!("the license would not verify: {}", other.explain(now)),
    }

    match &args.out {
        Some(path) => {
            fsutil::write_atomic(path, text.as_bytes(), fsutil::PUBLIC_MODE, Replace::Allowed)?;
            eprintln!(
                "issued license for '{}' on node {} for model {}, valid {} to {} (serial {}) -> {}",
                terms.licensee,
                enrollment.node_id,
                sealed.header().model_id,
                rfc3339(terms.not_before),
                rfc3339(terms.expires_at),
                terms.serial,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(exit::OK)
}

pub fn certify_issuer(args: CertifyIssuerArgs) -> Outcome {
    let now = clock::system_now();
    let root = keyfile::read_secret_key(&args.root)?;
    let issuer = keyfile::read_public_key(&args.issuer_pub)?;
    if TrustRoots::compiled_in().find(&root.public_key()).is_none() {
        bail!(
            "{} is not a root compiled into this build; certificates it signs would be refused",
            args.root.display()
        );
    }
    let not_before = match &args.valid_from {
        Some(t) => parse_instant(t, now).map_err(anyhow::Error::msg)?,
        None => crate::format::time::whole_seconds(now),
    };
    let certificate = IssuerCertBody {
        version: <IssuerCertBody as crate::format::Body>::VERSION,
        issuer_key: issuer.to_bytes(),
        orgs: args.orgs.clone(),
        models: args.models.clone(),
        not_before,
        not_after: parse_instant(&args.valid_until, now).map_err(anyhow::Error::msg)?,
        max_lease_seconds: parse_duration(&args.max_lease)
            .map_err(anyhow::Error::msg)?
            .num_seconds()
            .max(0) as u64,
    };
    let envelope = issuing::certify(&root, &certificate)?;
    fsutil::write_atomic(
        &args.out,
        envelope.render().as_bytes(),
        fsutil::PUBLIC_MODE,
        Replace::Allowed,
    )?;
    println!(
        "certified issuer {} for orgs [{}] and models [{}] until {} (max lease {} s) -> {}",
        issuer.key_id(),
        certificate.orgs.join(", "),
        certificate.models.join(", "),
        rfc3339(certificate.not_after),
        certificate.max_lease_seconds,
        args.out.display()
    );
    Ok(exit::OK)
}
