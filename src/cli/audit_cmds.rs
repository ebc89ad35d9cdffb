//! `leasehold audit export` (on an air-gapped node) and `leasehold admin audit …` (the
//! vendor): audits of an organization's usage, over `license_server::audits`.

use anyhow::Context;
use serde_json::json;

use super::server_cmds::{print_json, Admin};
use super::{exit, AdminAuditCommand, AuditExportArgs, Outcome, ReportFormat};
use crate::format::time::{parse_instant, rfc3339};
use crate::fsutil::{self, Replace};
use crate::ledger::audit::{self, BuildError, End};
use crate::ledger::report;
use crate::license_server::audits::{AnswerReceipt, Audit, AuditList, AuditRequest, NodeReport};
use crate::node::{clock, NodeIdentity};
use crate::runtime::renewal::error_message;

/// `leasehold audit export`.
pub fn export(args: AuditExportArgs) -> Outcome {
    let now = clock::system_now();
    let from = parse_instant(&args.from, now).map_err(anyhow::Error::msg)?;
    let to = parse_instant(&args.to, now).map_err(anyhow::Error::msg)?;
    let identity = NodeIdentity::load(&args.node_dir)?;
    let path = args.node_dir.join(crate::ledger::LEDGER_FILE);
    if !path.exists() {
        anyhow::bail!("this node has no usage ledger at {}", path.display());
    }
    let answer = match audit::build_from_file(
        &identity,
        &path,
        args.audit.as_deref(),
        from,
        to,
        End::FromGenesis,
        now,
    ) {
        Ok(a) => a,
        Err(e @ BuildError::Damaged(_)) => {
            eprintln!("error: {e}");
            return Ok(exit::LEDGER_DAMAGED);
        }
        Err(e @ BuildError::NotYet { .. }) => {
            eprintln!("error: {e}. Stopping `serve` also signs one");
            return Ok(exit::ERROR);
        }
        Err(e) => return Err(e.into()),
    };
    fsutil::write_atomic(&args.out, &answer, fsutil::PUBLIC_MODE, Replace::Allowed)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let parsed = audit::parse(&answer).map_err(anyhow::Error::msg)?;
    let body = &parsed.body;
    if args.json {
        print_json(&json!({
            "out": args.out,
            "node_id": body.node_id,
            "audit_id": body.audit_id,
            "from": body.from,
            "to": body.to,
            "first_seq": body.first_seq,
            "last_seq": body.last_seq,
            "records_bytes": body.records_bytes,
        }))?;
    } else {
        println!(
            "wrote {}: node {}'s ledger records {} to {} ({} bytes) covering {} to {}; send it to the vendor for `leasehold admin audit import`",
            args.out.display(),
            body.node_id,
            body.first_seq,
            body.last_seq,
            body.records_bytes,
            rfc3339(from),
            rfc3339(to)
        );
    }
    Ok(exit::OK)
}

/// `leasehold admin audit …`.
pub fn admin(admin: &Admin, command: AdminAuditCommand, json_out: bool) -> Outcome {
    let now = clock::system_now();
    match command {
        AdminAuditCommand::Request(a) => {
            let request = AuditRequest {
                org: a.org,
                from: parse_instant(&a.from, now).map_err(anyhow::Error::msg)?,
                to: parse_instant(&a.to, now).map_err(anyhow::Error::msg)?,
                max_renewals: Some(a.renewals),
                note: a.note,
            };
            let audit: Audit = admin.post("/admin/audits", &request)?;
            if json_out {
                print_json(&audit)?;
            } else {
                println!(
                    "audit {} of '{}' for {} to {}: {} node(s) asked; each answers after its next renewal (flagged after {} without an answer)",
                    audit.id,
                    audit.org,
                    rfc3339(audit.from),
                    rfc3339(audit.to),
                    audit.nodes.len(),
                    audit.max_renewals
                );
            }
        }
        AdminAuditCommand::List(a) => {
            let query: Vec<(&str, String)> = a.org.iter().map(|o| ("org", o.clone())).collect();
            let list: AuditList = admin.get("/admin/audits", &query)?;
            if json_out {
                print_json(&list)?;
            } else {
                for audit in &list.audits {
                    let answered = audit
                        .nodes
                        .iter()
                        .filter(|n| n.answered_at.is_some())
                        .count();
                    println!(
                        "{:24} {:20} {} to {}  {:8} {answered}/{} answered{}",
                        audit.id,
                        audit.org,
                        rfc3339(audit.from),
                        rfc3339(audit.to),
                        audit.status(),
                        audit.nodes.len(),
                        if audit.flagged() { "  FLAGGED" } else { "" }
                    );
                }
            }
        }
        AdminAuditCommand::Show(a) => {
            let audit: Audit = admin.get(&format!("/admin/audits/{}", a.id), &[])?;
            if json_out {
                print_json(&audit)?;
            } else {
                print_audit(&audit);
            }
        }
        AdminAuditCommand::Report(a) => {
            let path = format!("/admin/audits/{}/nodes/{}/report", a.id, a.node);
            let report: NodeReport = admin.get(&path, &[("by", a.by.as_str().to_string())])?;
            match (json_out, a.format) {
                (true, _) | (_, ReportFormat::Json) => print_json(&report)?,
                (_, ReportFormat::Csv) => print!("{}", report::csv(&report.rows)),
                (_, ReportFormat::Table) => {
                    println!(
                        "audit {} of '{}', node {}: {} to {}",
                        report.audit_id,
                        report.org,
                        report.node_id,
                        rfc3339(report.from),
                        rfc3339(report.to)
                    );
                    print!("{}", super::inspect::report_table(&report.rows));
                }
            }
        }
        AdminAuditCommand::Import(a) => {
            let bytes = fsutil::read_limited(&a.file, audit::MAX_ANSWER_BYTES, "audit answer")?;
            let (status, body) = admin.post_raw_any("/admin/audits/import", bytes)?;
            if (200..300).contains(&status) {
                let receipt: AnswerReceipt = serde_json::from_slice(&body)
                    .context("the license server's receipt is not what this leasehold expects")?;
                if json_out {
                    print_json(&json!({"accepted": true, "receipt": receipt}))?;
                } else {
                    println!(
                        "accepted: node {} answered audit {} with records {} to {} ({} requests, {} prompt and {} completion tokens in the period)",
                        receipt.node_id,
                        receipt.audit_id,
                        receipt.first_seq,
                        receipt.last_seq,
                        receipt.totals.requests,
                        receipt.totals.prompt_tokens,
                        receipt.totals.completion_tokens
                    );
                    for f in &receipt.findings {
                        println!("  FINDING kept with it: {}", printable(f));
                    }
                }
                return Ok(exit::OK);
            }
            let message = error_message(&body);
            if status != 422 {
                anyhow::bail!("the license server answered HTTP {status}: {message}");
            }
            if json_out {
                let code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(String::from));
                print_json(&json!({"accepted": false, "code": code, "message": message}))?;
            } else {
                println!("REFUSED: {}", printable(&message));
            }
            return Ok(exit::SERVER_REFUSED);
        }
    }
    Ok(exit::OK)
}

fn print_audit(audit: &Audit) {
    println!(
        "audit {} of '{}': {} to {} ({}), requested by {} at {}{}",
        audit.id,
        audit.org,
        rfc3339(audit.from),
        rfc3339(audit.to),
        audit.status(),
        audit.requested_by,
        rfc3339(audit.requested_at),
        if audit.note.is_empty() {
            String::new()
        } else {
            format!(": {}", audit.note)
        }
    );
    for node in &audit.nodes {
        let answer = match (&node.answered_at, &node.totals) {
            (Some(at), Some(t)) => format!(
                "answered {} ({}): {} requests, {} prompt and {} completion tokens, {} refused, {} filtered, {} cancelled",
                rfc3339(*at),
                node.via.map_or("?", |v| v.as_str()),
                t.requests,
                t.prompt_tokens,
                t.completion_tokens,
                t.refused,
                t.filtered,
                t.cancelled
            ),
            _ => format!("{} (asked at {} renewal(s))", node.status.to_uppercase(), node.asked),
        };
        println!("  node {}  {answer}", node.node_id);
        if let Some(r) = &node.last_refusal {
            println!("    last refused answer: {}", printable(r));
        }
        for f in &node.findings {
            println!("    FINDING: {}", printable(f));
        }
    }
}

/// Text from a node's records (a finding can quote them) without control characters, so
/// that printing it cannot drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
