//! Operator commands: enroll, fingerprint.

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{exit, EnrollArgs, FingerprintArgs, Outcome, RenewArgs, StatusArgs, TpmChoice};
use crate::fsutil::{self, Replace};
use crate::license::{TrustRoots, MAX_LICENSE_BYTES};
use crate::node::enrollment::{self, BindingChoice, DeclaredUse, LicenseRequest};
use crate::node::hardware::{self, ComponentKind, HardwareProfile};
use crate::node::identity::{KeyLocation, UnwrapKeyStore};
use crate::node::trusted_time::StateError;
use crate::node::{clock, trusted_time, NodeIdentity};
use crate::protocol::{self, Decision, LicenseRef, UsageCheckpoint};
use crate::runtime::admission::{assess_here, NodeRecords};
use crate::runtime::renewal;

/// Where `enroll --tpm WHEN [--tcti T]` puts a new node's unwrap key.
fn unwrap_key_store(choice: TpmChoice, tcti: Option<&str>) -> UnwrapKeyStore {
    let named = tcti.is_some_and(|t| !t.trim().is_empty())
        || std::env::var("TCTI").is_ok_and(|t| !t.trim().is_empty());
    let tpm = || UnwrapKeyStore::Tpm {
        tcti: crate::node::tpm_tcti(tcti),
    };
    match choice {
        TpmChoice::Off => UnwrapKeyStore::File,
        TpmChoice::On => tpm(),
        TpmChoice::Auto if named || std::path::Path::new("/dev/tpmrm0").exists() => tpm(),
        TpmChoice::Auto => UnwrapKeyStore::File,
    }
}

pub fn enroll(args: EnrollArgs) -> Outcome {
    let now = clock::system_now();
    let store = unwrap_key_store(args.tpm, args.tcti.as_deref());
    let (identity, created) = NodeIdentity::load_or_create_with(&args.node_dir, &store)?;
    if !created && args.tpm == TpmChoice::On && *identity.unwrap_location() == KeyLocation::File {
        eprintln!(
            "warning: {} already holds a node identity with file keys; --tpm applies to new node directories only (enroll a fresh --node-dir to use the TPM)",
            args.node_dir.display()
        );
    }
    // A new node starts its trusted time here; an existing one never starts it afresh.
    let high_water = if created {
        trusted_time::create(&identity, now)?.high_water
    } else {
        match trusted_time::record(&identity, now) {
            Ok(t) => t,
            Err(
                e @ (trusted_time::StateError::Missing { .. }
                | trusted_time::StateError::RemovedFromTpmNode { .. }),
            ) => {
                eprintln!("warning: {e}");
                crate::format::time::whole_seconds(now)
            }
            Err(e) => return Err(e.into()),
        }
    };
    let profile = HardwareProfile::collect(identity.tpm_tcti());
    let choice = BindingChoice {
        components: args.bind.clone(),
        required: args.require.clone(),
        min_others: args.min_others,
    };
    let declared = DeclaredUse {
        use_case: args.use_case.clone(),
        data_handling: args.data_handling.clone(),
        security_measures: args.security_measures.clone(),
    };
    let request = match (&args.org, &args.model) {
        (Some(org), Some(model)) => Some(LicenseRequest {
            organization: org.trim().to_string(),
            model_id: model.trim().to_string(),
        }),
        (None, None) => None,
        _ => anyhow::bail!("--org and --model go together"),
    };
    let envelope = enrollment::create(&identity, &profile, &choice, declared, request, high_water)?;
    if let Some(out) = &args.out {
        fsutil::write_atomic(
            out,
            envelope.render().as_bytes(),
            fsutil::PUBLIC_MODE,
            Replace::Allowed,
        )
        .with_context(|| format!("cannot write the enrollment to {}", out.display()))?;
    }
    let body: enrollment::EnrollmentBody = envelope.decode_body()?;
    let public = identity.public();
    println!(
        "{} node identity {} in {}",
        if created { "created" } else { "reused" },
        public.node_id(),
        args.node_dir.display()
    );
    let kinds: Vec<&str> = body
        .hardware
        .components
        .iter()
        .map(|c| c.kind.name())
        .collect();
    println!(
        "  unwrap key        {} ({})",
        identity.unwrap_location(),
        public.unwrap_key.suite()
    );
    println!(
        "  signing key       {}",
        match identity.signing_location() {
            KeyLocation::File => "file (node.key)".to_string(),
            tpm => format!("{tpm}, sealed (node.key.tpm)"),
        }
    );
    if let Some(anchor) = identity.state_anchor() {
        println!(
            "  state counter     TPM NV index {:#010x} (counter.tpm): a restored older state.json is refused",
            anchor.nv_index()
        );
    }
    println!("  bound components  {}", kinds.join(", "));
    println!(
        "  match policy      {}",
        body.hardware.policy.describe(&body.hardware.components)
    );
    for note in clone_notes(&profile, &body.hardware.policy.required) {
        println!("  {note}");
    }
    if let Some(warning) = clone_warning(&body.hardware.policy.required) {
        println!("warning: {warning}");
    }
    if let Some(out) = &args.out {
        println!("wrote enrollment {}", out.display());
    }
    match &args.server {
        None => {
            println!("send the enrollment to the vendor to get a license");
        }
        Some(url) => {
            let token = args
                .enrollment_token_file
                .as_deref()
                .map(|p| crate::http_auth::read_tokens(p, "enrollment token"))
                .transpose()?
                .map(|mut t| t.remove(0));
            let submitted =
                renewal::submit_enrollment(url, envelope.render().into_bytes(), token.as_deref())?;
            if submitted.status == "approved" {
                println!(
                    "submitted to {url}: enrollment {} is approved (enrollment token, within the entitlement's seats); start the node with `leasehold serve --license-server {url} ...`",
                    submitted.enrollment_id
                );
            } else {
                println!(
                    "submitted to {url}: enrollment {} is {}; once the vendor approves it, start the node with `leasehold serve --license-server {url} ...`",
                    submitted.enrollment_id, submitted.status
                );
            }
            println!("{}", submitted.enrollment_id);
        }
    }
    Ok(exit::OK)
}

/// Which of the components a disk copy does not carry the binding leaves out, and why.
fn clone_notes(profile: &HardwareProfile, required: &[ComponentKind]) -> Vec<String> {
    ComponentKind::CLONE_RESISTANT
        .into_iter()
        .filter_map(|kind| {
            if profile.get(kind).is_none() {
                Some(format!(
                    "not readable here {kind}: {}",
                    profile.why_unreadable(kind)
                ))
            } else if !required.contains(&kind) {
                Some(format!(
                    "not required      {kind} (a disk copy in another box need not match it)"
                ))
            } else {
                None
            }
        })
        .collect()
}

/// The warning for a policy that requires none of the components a disk copy does not
/// carry: a clone of this machine would satisfy it.
fn clone_warning(required: &[ComponentKind]) -> Option<String> {
    if ComponentKind::CLONE_RESISTANT
        .iter()
        .any(|kind| required.contains(kind))
    {
        return None;
    }
    let names: Vec<&str> = ComponentKind::CLONE_RESISTANT
        .iter()
        .map(|k| k.name())
        .collect();
    Some(format!(
        "the policy requires none of {}: a copy of this machine's disk in another box of \
         the same model would match it (see docs/HARDWARE.md)",
        names.join(", ")
    ))
}

pub fn fingerprint(args: FingerprintArgs) -> Outcome {
    let profile = HardwareProfile::collect(crate::node::tpm_if_present().as_deref());
    // A fixed all-zero salt: stable between runs for comparison; enrollments use a random one.
    let salt = [0u8; 16];
    let bound = hardware::bind(&profile, &salt, None);
    let policy = enrollment::choose_policy(&bound, &BindingChoice::default());
    let hash = |kind, value: &str| hex::encode(hardware::enrollment_hash(&salt, kind, value));
    if args.json {
        let rows: Vec<_> = profile
            .components
            .iter()
            .map(|c| {
                let values: Vec<_> = c
                    .values
                    .iter()
                    .map(|v| json!({"raw": v, "hash": hash(c.kind, v)}))
                    .collect();
                json!({
                    "kind": c.kind,
                    "values": values,
                    "on_a_clone": c.kind.on_a_clone(),
                    "required_by_default": policy.required.contains(&c.kind),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "components": rows,
                "unreadable": profile.unreadable,
                "default_policy": policy,
                "tpm": tpm_probe(),
            }))?
        );
        return Ok(exit::OK);
    }
    println!("Hardware components of this machine (hash: unsalted view; enrollments salt them):");
    println!(
        "  component         raw value                                hash              on a clone of this disk"
    );
    for c in &profile.components {
        for v in &c.values {
            println!(
                "  {:17} {:40} {:16}  {}",
                c.kind.name(),
                v,
                &hash(c.kind, v)[..16],
                c.kind.on_a_clone()
            );
        }
    }
    for u in &profile.unreadable {
        println!("  {:17} not readable here: {}", u.kind.name(), u.reason);
    }
    println!("Default match policy here: {}", policy.describe(&bound));
    if let Some(warning) = clone_warning(&policy.required) {
        println!("warning: {warning}");
    }
    let tpm = tpm_probe();
    match tpm["available"].as_bool() {
        Some(true) => println!(
            "TPM 2.0 at {}: `enroll --tpm` keeps the node's unwrap key in it",
            tpm["tcti"].as_str().unwrap_or_default()
        ),
        _ => println!(
            "TPM: none usable ({}); nodes here keep file keys",
            tpm["detail"].as_str().unwrap_or_default()
        ),
    }
    Ok(exit::OK)
}

/// Whether a TPM answers at the TCTI `enroll --tpm` would use (the `TCTI` environment
/// variable, else /dev/tpmrm0): `{tcti, available, detail}`.
fn tpm_probe() -> serde_json::Value {
    let tcti = crate::node::tpm_tcti(None);
    #[cfg(feature = "tpm")]
    let (available, detail) = match crate::node::tpm::open_context(&tcti) {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    };
    #[cfg(not(feature = "tpm"))]
    let (available, detail) = (
        false,
        "this build has no TPM support (cargo feature `tpm`)".to_string(),
    );
    json!({"tcti": tcti, "available": available, "detail": detail})
}

/// The request an air-gapped node is waiting on: kept in the node directory so that
/// only the response to it is accepted.
const PENDING_FILE: &str = "renewal-pending.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct PendingRenewal {
    nonce: String,
    license_id: String,
    serial: u64,
    licensee: String,
    model_id: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

pub fn renew(args: RenewArgs) -> Outcome {
    let identity = NodeIdentity::load(&args.node_dir)?;
    let bytes = fsutil::read_limited(&args.license, MAX_LICENSE_BYTES, "license")?;
    // A TPM node whose state was removed renews too (which is how it gets its state
    // back): for it, the license only (authenticated).
    let state_removed = !identity.dir().join(trusted_time::STATE_FILE).exists()
        && identity.state_anchor().is_some();
    let records = (!state_removed).then(|| NodeRecords::new(&identity));
    let current = assess_here(&bytes, records)?
        .license
        .with_context(|| {
            format!(
                "{} is not a license this build can authenticate (see `leasehold inspect`)",
                args.license.display()
            )
        })?
        .body;
    let pending_path = args.node_dir.join(PENDING_FILE);
    if let Some(out) = &args.request_out {
        let mut nonce = crate::crypto::random::bytes::<16>();
        if let (true, Some(anchor)) = (state_removed, identity.state_anchor()) {
            // The response will make the state afresh: bind the request to the TPM's
            // counter, moved now, so that no response to an earlier request (kept with
            // its pending file) can do that again.
            let bound = anchor.increment().map_err(StateError::from)?;
            nonce[..8].copy_from_slice(&bound.to_be_bytes());
        }
        let (request, nonce) = protocol::sign_request_with_nonce(
            &identity,
            &current.model.model_id,
            Some(LicenseRef {
                license_id: current.license_id.clone(),
                serial: current.serial,
            }),
            UsageCheckpoint::default(),
            clock::system_now(),
            nonce,
        );
        let pending = PendingRenewal {
            nonce: hex::encode(nonce),
            license_id: current.license_id.clone(),
            serial: current.serial,
            licensee: current.licensee.clone(),
            model_id: current.model.model_id.clone(),
            created_at: clock::system_now(),
        };
        fsutil::write_atomic(
            &pending_path,
            serde_json::to_string_pretty(&pending)?.as_bytes(),
            fsutil::SECRET_MODE,
            Replace::Allowed,
        )?;
        fsutil::write_atomic(
            out,
            request.render().as_bytes(),
            fsutil::PUBLIC_MODE,
            Replace::Allowed,
        )
        .with_context(|| format!("cannot write {}", out.display()))?;
        println!(
            "wrote renewal request {} for license {} (serial {}); carry it to the vendor: leasehold admin ... renew --request {}",
            out.display(),
            current.license_id,
            current.serial,
            out.display()
        );
        return Ok(exit::OK);
    }
    let response_path = args.response.as_ref().expect("clap requires one direction");
    let pending_bytes = fsutil::read_limited(&pending_path, 64 * 1024, "pending renewal")
        .with_context(|| {
            format!(
                "no renewal request is pending for this node ({}); write one first with --request-out",
                pending_path.display()
            )
        })?;
    let pending: PendingRenewal = serde_json::from_slice(&pending_bytes)
        .with_context(|| format!("{} is damaged; write a new request", pending_path.display()))?;
    let nonce: [u8; 16] = hex::decode(&pending.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .with_context(|| format!("{} is damaged; write a new request", pending_path.display()))?;
    let response = fsutil::read_limited(
        response_path,
        crate::format::envelope::MAX_DOCUMENT_BYTES,
        "renewal response",
    )?;
    let node_id = identity.public().node_id();
    let opened = protocol::open_response(
        &response,
        &TrustRoots::compiled_in(),
        &protocol::Expected {
            node_id: &node_id,
            nonce,
            scope: Some((&pending.licensee, &pending.model_id)),
        },
    )
    .with_context(|| format!("{} is refused", response_path.display()))?;
    // The issuer signed its clock in answer to this node's nonce: a trusted-time floor.
    let server_time = opened.body.server_time;
    if let (true, Some(anchor)) = (state_removed, identity.state_anchor()) {
        let counter = anchor.read().map_err(StateError::from)?.counter;
        if nonce[..8] != counter.to_be_bytes() {
            anyhow::bail!(
                "{} answers a request written before this node's TPM counter last moved (it is at {counter}); a response re-establishes a removed state only for the latest request: write a new one with --request-out",
                response_path.display()
            );
        }
    }
    if let Err(e) = trusted_time::observe_server_time(&identity, server_time) {
        if state_removed {
            return Err(e.into());
        }
        eprintln!("warning: cannot record the license server's time: {e}");
    }
    match opened.body.decision {
        Decision::Renewed { license } => {
            let assessment = assess_here(license.as_bytes(), Some(NodeRecords::new(&identity)))?;
            let renewed = match (assessment.verdict.allows_serving(), assessment.license) {
                (true, Some(l)) => l.body,
                _ => anyhow::bail!(
                    "the renewed license in the response is not usable here: {}",
                    assessment.verdict.explain(clock::system_now())
                ),
            };
            if renewed.serial <= current.serial {
                anyhow::bail!(
                    "the response's license has serial {}, not higher than the current {}; it is an old response",
                    renewed.serial,
                    current.serial
                );
            }
            fsutil::write_atomic(
                &args.license,
                license.as_bytes(),
                fsutil::PUBLIC_MODE,
                Replace::Allowed,
            )?;
            let _ = std::fs::remove_file(&pending_path);
            println!(
                "renewed: {} now holds serial {}, expires {}; a running `leasehold serve` takes it over on SIGHUP",
                args.license.display(),
                renewed.serial,
                renewed.expires_at
            );
            Ok(exit::OK)
        }
        Decision::Refused { reason, message } => {
            let _ = std::fs::remove_file(&pending_path);
            if reason == protocol::RefusalReason::Revoked {
                trusted_time::update(&identity, |s| s.note_revoked(&pending.license_id))?;
            }
            eprintln!(
                "the license server refused ({}): {message}",
                reason.as_str()
            );
            Ok(exit::SERVER_REFUSED)
        }
        Decision::Pending { message, .. } => {
            eprintln!("not renewed yet: {message}");
            Ok(exit::ERROR)
        }
    }
}

/// `leasehold status`: ask a running `serve` for its license state.
pub fn status(args: StatusArgs) -> Outcome {
    let url = format!("{}/v1/license", args.url.trim_end_matches('/'));
    let key = args
        .api_key_file
        .as_deref()
        .map(|p| crate::http_auth::read_tokens(p, "API key"))
        .transpose()?
        .map(|mut keys| keys.remove(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let body: Value = rt.block_on(async {
        let mut request = reqwest::Client::new().get(&url);
        if let Some(key) = &key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach a leasehold node at {url}; is `leasehold serve` running there?")
        })?;
        if !response.status().is_success() {
            bail!("{url} answered HTTP {}", response.status());
        }
        response
            .json()
            .await
            .with_context(|| format!("{url} did not answer with license JSON"))
    })?;
    let phase = body["phase"].as_str().unwrap_or("unknown").to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        println!(
            "{phase}: model '{}' for '{}', license {} serial {}, expires {} ({} s left), grace ends {}",
            body["model_id"].as_str().unwrap_or("?"),
            body["licensee"].as_str().unwrap_or("?"),
            body["license_id"].as_str().unwrap_or("?"),
            body["serial"],
            body["expires_at"].as_str().unwrap_or("?"),
            body["seconds_left"],
            body["grace_ends"].as_str().unwrap_or("?"),
        );
        if body["redacted"].is_string() {
            eprintln!("(the node has API keys: give one with --api-key-file to see the licensee, model and license)");
        }
    }
    Ok(match phase.as_str() {
        "serving" => exit::OK,
        "grace" => exit::IN_GRACE,
        "lapsed" => exit::EXPIRED,
        _ => exit::ERROR,
    })
}
