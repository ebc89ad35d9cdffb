//! Operator commands: enroll, fingerprint.

use anyhow::Context;
use serde_json::json;

use super::{exit, EnrollArgs, FingerprintArgs, Outcome};
use crate::fsutil::{self, Replace};
use crate::node::enrollment::{self, BindingChoice, DeclaredUse};
use crate::node::hardware::{self, HardwareProfile};
use crate::node::{clock, trusted_time, NodeIdentity};

pub fn enroll(args: EnrollArgs) -> Outcome {
    let now = clock::system_now();
    let (identity, created) = NodeIdentity::load_or_create(&args.node_dir)?;
    let high_water = trusted_time::record(&identity, now)?;
    let profile = HardwareProfile::collect();
    let choice = BindingChoice {
        components: args.bind.clone(),
        required: args.require.clone(),
        min_others: args.min_others,
    };
    let declared = DeclaredUse {
        use_case: args.use_case.clone(),
        data_handling: args.data_handling.clone(),
    };
    let envelope = enrollment::create(&identity, &profile, &choice, declared, high_water)?;
    fsutil::write_atomic(
        &args.out,
        envelope.render().as_bytes(),
        fsutil::PUBLIC_MODE,
        Replace::Allowed,
    )
    .with_context(|| format!("cannot write the enrollment to {}", args.out.display()))?;
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
    println!("  bound components  {}", kinds.join(", "));
    println!(
        "  match policy      {}",
        body.hardware.policy.describe(&body.hardware.components)
    );
    println!(
        "wrote enrollment {}; send it to the vendor to get a license",
        args.out.display()
    );
    Ok(exit::OK)
}

pub fn fingerprint(args: FingerprintArgs) -> Outcome {
    let profile = HardwareProfile::collect();
    // A fixed all-zero salt: stable between runs for comparison; enrollments use a random one.
    let salt = [0u8; 16];
    let rows: Vec<_> = profile
        .components
        .iter()
        .map(|c| {
            let values: Vec<_> = c
                .values
                .iter()
                .map(|v| json!({"raw": v, "hash": hex::encode(hardware::enrollment_hash(&salt, c.kind, v))}))
                .collect();
            json!({"kind": c.kind.name(), "values": values})
        })
        .collect();
    let missing: Vec<&str> = hardware::ComponentKind::ALL
        .iter()
        .filter(|k| profile.get(**k).is_none())
        .map(|k| k.name())
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"components": rows, "unreadable": missing}))?
        );
        return Ok(exit::OK);
    }
    println!("Hardware components this machine would be bound by (hash: unsalted view; enrollments salt them):");
    for c in &profile.components {
        for v in &c.values {
            println!(
                "  {:13} {:40} {}",
                c.kind.name(),
                v,
                &hex::encode(hardware::enrollment_hash(&salt, c.kind, v))[..16]
            );
        }
    }
    if !missing.is_empty() {
        println!("  not readable here: {}", missing.join(", "));
    }
    Ok(exit::OK)
}
