//! inspect and check: verify a license and report; check also opens the sealed model.

use std::path::Path;

use serde_json::json;

use anyhow::Context;

use super::{
    exit, progress, AuditReportArgs, AuditVerifyArgs, CheckArgs, InspectArgs, NodeKeyArgs, Outcome,
    ReportFormat, VerifyAttestationArgs,
};
use crate::format::time::{human_duration, rfc3339};
use crate::fsutil;
use crate::ledger::report::REPORT_COLUMNS;
use crate::license::verify::{Authority, VerifiedLicense};
use crate::license::{Assessment, Verdict, MAX_LICENSE_BYTES};
use crate::node::{clock, NodeIdentity};
use crate::runtime::admission::{self, Refusal};
use crate::seal::SealError;

/// Assess a license file for this machine, with the node directory when given (whose
/// identity is returned too).
fn assess_file(
    license: &Path,
    node_dir: Option<&Path>,
) -> anyhow::Result<(Assessment, Option<NodeIdentity>)> {
    let bytes = fsutil::read_limited(license, MAX_LICENSE_BYTES, "license")?;
    let identity = node_dir.map(NodeIdentity::load).transpose()?;
    let assessment =
        admission::assess_here(&bytes, identity.as_ref().map(admission::NodeRecords::new))?;
    Ok((assessment, identity))
}

/// Where a node's keys live: `{"signing": "file"|"tpm (TCTI)", "unwrap": …}`.
fn node_keys_json(identity: &NodeIdentity) -> serde_json::Value {
    json!({
        "signing": identity.signing_location().to_string(),
        "unwrap": identity.unwrap_location().to_string(),
        "unwrap_suite": identity.public().unwrap_key.suite(),
        "state_counter": identity.state_anchor().map(|a| format!("{:#010x}", a.nv_index())),
    })
}

fn authority_line(authority: &Authority) -> String {
    match authority {
        Authority::Root { key_id, demo } => format!(
            "root {key_id}{}",
            if *demo { " (DEMO ROOT: its secret is public; for testing only)" } else { "" }
        ),
        Authority::Issuer {
            key_id,
            root_key_id,
            root_demo,
            certificate,
        } => format!(
            "issuer {key_id}, certified by root {root_key_id}{} for orgs [{}], models [{}] until {}",
            if *root_demo { " (DEMO ROOT)" } else { "" },
            certificate.orgs.join(", "),
            certificate.models.join(", "),
            rfc3339(certificate.not_after)
        ),
    }
}

fn print_license(license: &VerifiedLicense) {
    let b = &license.body;
    println!("License {}  serial {}", b.license_id, b.serial);
    println!("  licensee      {}", b.licensee);
    println!("  signed by     {}", authority_line(&license.authority));
    println!(
        "  node          {} (unwrap key: {})",
        b.node.node_id,
        if b.node.unwrap_suite.is_some() {
            "P-256, which the node's enrollment says is held in its TPM (not attested)"
        } else {
            "X25519, in a file"
        }
    );
    let kinds: Vec<&str> = b
        .node
        .hardware
        .components
        .iter()
        .map(|c| c.kind.name())
        .collect();
    println!(
        "  hardware      {} (policy: {})",
        kinds.join(", "),
        b.node.hardware.policy.describe(&b.node.hardware.components)
    );
    println!(
        "  model         {} ({} bytes, sha256 {})",
        b.model.model_id,
        b.model.plaintext_len,
        hex::encode(b.model.plaintext_sha256.0)
    );
    println!(
        "  sealed header {}",
        hex::encode(b.model.sealed_header_sha256.0)
    );
    println!(
        "  valid         {} to {}",
        rfc3339(b.not_before),
        rfc3339(b.expires_at)
    );
    println!(
        "  grace         {}",
        if b.grace_seconds == 0 {
            "none".to_string()
        } else {
            format!(
                "{} (serving ends {})",
                human_duration(b.grace()),
                rfc3339(b.grace_ends())
            )
        }
    );
    let caps: Vec<String> = b
        .caps
        .entries()
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    println!(
        "  caps          {}",
        if caps.is_empty() {
            "none".into()
        } else {
            caps.join(", ")
        }
    );
    println!(
        "  features      {}",
        if b.features.is_empty() {
            "none".into()
        } else {
            b.features.join(", ")
        }
    );
    println!("  safeguards    {}", b.safeguards_summary());
    println!(
        "  renewal       {}",
        if b.renewal.is_empty() {
            "none".into()
        } else {
            b.renewal.join(", ")
        }
    );
    println!("  issued        {}", rfc3339(b.issued_at));
}

fn license_json(license: &VerifiedLicense) -> serde_json::Value {
    let authority = match &license.authority {
        Authority::Root { key_id, demo } => json!({"kind": "root", "key_id": key_id, "demo": demo}),
        Authority::Issuer {
            key_id,
            root_key_id,
            root_demo,
            certificate,
        } => {
            json!({"kind": "issuer", "key_id": key_id, "root_key_id": root_key_id, "demo": root_demo, "certificate": certificate})
        }
    };
    let mut body = serde_json::to_value(&license.body).expect("license bodies serialize");
    body["grace_ends"] = json!(rfc3339(license.body.grace_ends()));
    body["signed_by"] = authority;
    body
}

pub fn inspect(args: InspectArgs) -> Outcome {
    let (assessment, identity) = assess_file(&args.license, args.node_dir.as_deref())?;
    let now = clock::system_now();
    let code = exit::for_verdict(&assessment.verdict);
    let message = assessment.verdict.explain(now);
    if args.json {
        let out = json!({
            "verdict": assessment.verdict.name(),
            "exit_code": code,
            "message": message,
            "node_checked": args.node_dir.is_some(),
            "node_keys": identity.as_ref().map(node_keys_json),
            "license": assessment.license.as_ref().map(license_json),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(license) = &assessment.license {
            print_license(license);
        }
        if let Some(identity) = &identity {
            println!(
                "  node keys     signing key: {}; unwrap key: {}",
                identity.signing_location(),
                identity.unwrap_location()
            );
            if let Some(anchor) = identity.state_anchor() {
                println!(
                    "  node state    anchored in TPM counter {:#010x} and the TPM's Clock (checked)",
                    anchor.nv_index()
                );
            }
        }
        println!("verdict: {message}");
        if args.node_dir.is_none() && assessment.verdict.allows_serving() {
            println!("  (node keys and trusted time not checked: pass --node-dir to check them)");
        }
    }
    Ok(code)
}

/// One failed step of `check`.
struct CheckFailure {
    code: u8,
    message: String,
}

impl From<Refusal> for CheckFailure {
    fn from(refusal: Refusal) -> Self {
        CheckFailure {
            code: exit::for_refusal(&refusal),
            message: refusal.to_string(),
        }
    }
}

impl From<SealError> for CheckFailure {
    fn from(e: SealError) -> Self {
        Refusal::Sealed(e).into()
    }
}

impl From<anyhow::Error> for CheckFailure {
    fn from(e: anyhow::Error) -> Self {
        CheckFailure {
            code: exit::for_error(&e),
            message: format!("{e:#}"),
        }
    }
}

/// Before any key is unwrapped: no core dumps, no same-user ptrace, /proc/PID/mem or
/// /proc/PID/fd reads (the memfd of weights would be readable through them).
pub(super) fn forbid_dumps() -> anyhow::Result<()> {
    crate::runtime::weights::forbid_dumps().context(
        "cannot forbid core dumps and same-user ptrace (PR_SET_DUMPABLE); refusing to handle keys and weights a same-user process could read",
    )
}

/// Before any key is unwrapped: llama.cpp's libraries checked against this build and its
/// CPU kernels loaded. A refusal is reported and becomes exit 25.
/// Without the inference runtime there is nothing native to check.
pub(super) fn check_native() -> Result<(), u8> {
    #[cfg(feature = "inference")]
    crate::runtime::engine::init_native().map_err(|message| {
        super::report_error(&message);
        exit::NATIVE_REFUSED
    })?;
    Ok(())
}

pub fn check(args: CheckArgs) -> Outcome {
    forbid_dumps()?;
    if let Err(code) = check_native() {
        return Ok(code);
    }
    let mut steps: Vec<String> = Vec::new();
    let result = run_check(&args, &mut steps);
    let (code, message) = match &result {
        Ok(msg) => (exit::OK, msg.clone()),
        Err(f) => (f.code, f.message.clone()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": code == exit::OK,
                "exit_code": code,
                "message": message,
                "steps": steps,
            }))?
        );
    } else {
        for step in &steps {
            println!("  ok  {step}");
        }
        match &result {
            Ok(_) => println!("{message}"),
            Err(_) => eprintln!("check failed: {message}"),
        }
    }
    Ok(code)
}

fn run_check(args: &CheckArgs, steps: &mut Vec<String>) -> Result<String, CheckFailure> {
    let identity = NodeIdentity::load(&args.licensed.node_dir).map_err(anyhow::Error::from)?;
    let bytes = fsutil::read_limited(&args.licensed.license, MAX_LICENSE_BYTES, "license")
        .map_err(anyhow::Error::from)?;
    let admitted = admission::admit(
        &bytes,
        admission::NodeRecords::new(&identity),
        &args.licensed.sealed,
    )?;
    let now = clock::system_now();
    let body = &admitted.license.body;
    let header = admitted.sealed.header();
    steps.push(format!(
        "signature chain verified ({})",
        authority_line(&admitted.license.authority)
    ));
    steps.push(format!(
        "issued to this node ({}) and this hardware",
        body.node.node_id
    ));
    steps.push(format!("trusted time: {}", admitted.verdict.explain(now)));
    steps.push(format!(
        "sealed model '{}' is the one licensed",
        header.model_id
    ));
    steps.push("content key unwrapped with this node's key".into());

    let bar = progress::bytes(header.plaintext_len, "decrypting");
    let plaintext = admitted
        .sealed
        .decrypt_to_memory(&admitted.key, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    steps.push(format!(
        "decrypted {} bytes in memory; sha256 matches {}",
        plaintext.len(),
        hex::encode(header.plaintext_sha256)
    ));
    drop(plaintext);
    let mut message = format!("ok: this node can serve model '{}' now", header.model_id);
    if let Verdict::InGrace { grace_ends, .. } = admitted.verdict {
        message.push_str(&format!(
            " (IN GRACE: the license has expired and serving stops at {}; renew it)",
            rfc3339(grace_ends)
        ));
    }
    Ok(message)
}

/// The node key an auditor names: a public key file or an enrollment.
fn auditor_node_key(key: &NodeKeyArgs) -> anyhow::Result<crate::crypto::signing::PublicKey> {
    Ok(match (&key.node_pub, &key.enrollment) {
        (Some(p), _) => crate::crypto::keyfile::read_public_key(p)?,
        (None, Some(e)) => {
            let bytes =
                fsutil::read_limited(e, crate::format::envelope::MAX_DOCUMENT_BYTES, "enrollment")?;
            let body = crate::node::enrollment::verify(&bytes)?;
            crate::crypto::signing::PublicKey::from_bytes(&body.signing_key)?
        }
        (None, None) => anyhow::bail!("give --node-pub or --enrollment"),
    })
}

pub fn verify_attestation(args: VerifyAttestationArgs) -> Outcome {
    let key = auditor_node_key(&args.key)?;
    let bytes = fsutil::read_limited(
        &args.file,
        crate::format::envelope::MAX_DOCUMENT_BYTES,
        "attestation",
    )?;
    match crate::ledger::attestation::verify(&bytes, &key) {
        Ok(a) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"valid": true, "attestation": a}))?
                );
            } else {
                println!(
                    "valid: node {} attested at {}: license {} serial {} for '{}' (model '{}'), {} until {}, ledger record {} (head {}), {} requests, {} prompt and {} completion tokens",
                    a.node_id,
                    rfc3339(a.at),
                    a.license_id,
                    a.serial,
                    a.licensee,
                    a.model_id,
                    a.phase,
                    rfc3339(a.expires_at),
                    a.ledger_seq,
                    &hex::encode(a.ledger_head)[..16],
                    a.totals.requests,
                    a.totals.prompt_tokens,
                    a.totals.completion_tokens
                );
            }
            Ok(exit::OK)
        }
        Err(reason) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"valid": false, "problem": reason.kind(), "reason": reason.to_string()})
                    )?
                );
            } else {
                println!("INVALID: {reason}");
            }
            Ok(exit::TAMPERED)
        }
    }
}

pub fn audit_verify(args: AuditVerifyArgs) -> Outcome {
    let key = auditor_node_key(&args.key)?;
    let node_id = key.key_id();
    let bytes = std::fs::read(&args.ledger)
        .with_context(|| format!("cannot read {}", args.ledger.display()))?;
    let (summary, problem) = crate::ledger::verify::verify(&bytes, &key, &node_id);
    let after_checkpoint = summary.head_seq - summary.last_checkpoint.map_or(0, |c| c.0);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "intact": problem.is_none(),
                "problem": problem.as_ref().map(|p| p.kind()),
                "message": problem.as_ref().map(|p| p.explain()),
                "node_id": node_id,
                "records": summary.records,
                "checkpoints": summary.checkpoints,
                "last_checkpoint_seq": summary.last_checkpoint.map(|c| c.0),
                "head_seq": summary.head_seq,
                "head_hash": hex::encode(summary.head_hash),
                "requests": summary.totals.requests,
                "prompt_tokens": summary.totals.prompt_tokens,
                "completion_tokens": summary.totals.completion_tokens,
            }))?
        );
    } else {
        match &problem {
            None => println!(
                "intact: {} records of node {node_id} ({} requests, {} prompt and {} completion tokens), {} signed checkpoints; {} record(s) after the last checkpoint",
                summary.records,
                summary.totals.requests,
                summary.totals.prompt_tokens,
                summary.totals.completion_tokens,
                summary.checkpoints,
                after_checkpoint
            ),
            Some(p) => {
                println!("DAMAGED: {}", p.explain());
                println!(
                    "  verified before it: {} records up to record {} ({} signed checkpoints)",
                    summary.records, summary.head_seq, summary.checkpoints
                );
            }
        }
    }
    Ok(if problem.is_none() {
        exit::OK
    } else {
        exit::LEDGER_DAMAGED
    })
}

/// Text columns left-aligned, counts right-aligned.
/// A report as `audit report --format table` prints it (also `admin audit report`).
pub(super) fn report_table(rows: &[crate::ledger::report::ReportRow]) -> String {
    let header = REPORT_COLUMNS.map(|c| c.replace('_', " ").to_uppercase());
    let mut out = table_line(&header) + "\n";
    for r in rows {
        out.push_str(&table_line(&r.cells()));
        out.push('\n');
    }
    out
}

fn table_line(cells: &[String; 11]) -> String {
    const WIDTHS: [usize; 11] = [10, 32, 16, 10, 9, 13, 17, 9, 8, 7, 11];
    cells
        .iter()
        .zip(WIDTHS)
        .enumerate()
        .map(|(i, (c, w))| {
            if i < 4 {
                format!("{c:w$}")
            } else {
                format!("{c:>w$}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn audit_report(args: AuditReportArgs) -> Outcome {
    let now = clock::system_now();
    let parse = |t: &Option<String>| {
        t.as_deref()
            .map(|t| crate::format::time::parse_instant(t, now).map_err(anyhow::Error::msg))
            .transpose()
    };
    let (from, to) = (parse(&args.from)?, parse(&args.to)?);
    let text = std::fs::read(&args.ledger)
        .with_context(|| format!("cannot read {}", args.ledger.display()))?;
    let (rows, unreadable) = crate::ledger::report::report_rows(&text, from, to, args.by);
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} line(s) of {} are not intact records and were left out; run `leasehold audit verify`",
            args.ledger.display()
        );
    }
    match args.format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"rows": rows, "totals": crate::ledger::report::totals(&rows)})
            )?
        ),
        ReportFormat::Csv => print!("{}", crate::ledger::report::csv(&rows)),
        ReportFormat::Table => print!("{}", report_table(&rows)),
    }
    Ok(exit::OK)
}
