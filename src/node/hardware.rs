//! The hardware fingerprint a license binds: components read from this machine, hashed
//! with salts so neither enrollments nor licenses reveal serial numbers, and a match
//! policy "all required components + at least k of the others".
//!
//! Component stability (see docs/HARDWARE.md): `machine-id` is stable across reboots,
//! VMs and containers that bind-mount it; `product-uuid` is readable by root only and
//! absent in many VMs; `mac-address` changes when NICs are replaced or a VM is
//! recreated; `memory-class` survives small changes (rounded up to a power of two GiB);
//! `cpu-model` changes with migration to other hardware; `hostname` is the least stable.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::sha256;
use crate::format::encoding::Digest;

/// A kind of hardware component.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    MachineId,
    ProductUuid,
    CpuModel,
    MemoryClass,
    MacAddress,
    Hostname,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 6] = [
        ComponentKind::MachineId,
        ComponentKind::ProductUuid,
        ComponentKind::CpuModel,
        ComponentKind::MemoryClass,
        ComponentKind::MacAddress,
        ComponentKind::Hostname,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::MachineId => "machine-id",
            ComponentKind::ProductUuid => "product-uuid",
            ComponentKind::CpuModel => "cpu-model",
            ComponentKind::MemoryClass => "memory-class",
            ComponentKind::MacAddress => "mac-address",
            ComponentKind::Hostname => "hostname",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One component as read from the machine. Some kinds have several values (MACs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    pub kind: ComponentKind,
    pub values: Vec<String>,
}

/// The raw components of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HardwareProfile {
    pub components: Vec<Component>,
}

impl HardwareProfile {
    /// Read this machine's components. Unreadable ones are left out.
    pub fn collect() -> HardwareProfile {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let mut components = Vec::new();
        let mut push = |kind, values: Vec<String>| {
            let values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
            if !values.is_empty() {
                components.push(Component { kind, values });
            }
        };
        let machine_id =
            read_trimmed("/etc/machine-id").or_else(|| read_trimmed("/var/lib/dbus/machine-id"));
        push(ComponentKind::MachineId, machine_id.into_iter().collect());
        push(
            ComponentKind::ProductUuid,
            read_trimmed("/sys/class/dmi/id/product_uuid")
                .map(|u| u.to_ascii_lowercase())
                .into_iter()
                .collect(),
        );
        push(
            ComponentKind::CpuModel,
            system
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_string())
                .into_iter()
                .collect(),
        );
        push(
            ComponentKind::MemoryClass,
            vec![memory_class(system.total_memory())],
        );
        push(ComponentKind::MacAddress, physical_macs());
        push(
            ComponentKind::Hostname,
            System::host_name().into_iter().collect(),
        );
        HardwareProfile { components }
    }

    /// A profile from `(kind, values)` pairs, several values comma-separated
    /// (`"02:00:00:00:00:01,02:00:00:00:00:02"`): for tests, vectors and tools.
    pub fn from_pairs(pairs: &[(ComponentKind, &str)]) -> HardwareProfile {
        HardwareProfile {
            components: pairs
                .iter()
                .map(|(kind, values)| Component {
                    kind: *kind,
                    values: values.split(',').map(String::from).collect(),
                })
                .collect(),
        }
    }

    pub fn get(&self, kind: ComponentKind) -> Option<&Component> {
        self.components.iter().find(|c| c.kind == kind)
    }
}

/// Total memory rounded up to a power of two GiB ("32GiB"), so small changes in what
/// the kernel reserves do not change the component.
pub fn memory_class(total_bytes: u64) -> String {
    if total_bytes == 0 {
        return String::new();
    }
    let gib = total_bytes.div_ceil(1 << 30);
    format!("{}GiB", gib.next_power_of_two())
}

fn read_trimmed(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// MAC addresses of physical network interfaces (those backed by a device), sorted.
fn physical_macs() -> Vec<String> {
    let mut macs = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return macs;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !Path::new(&dir).join("device").exists() {
            continue;
        }
        if let Some(mac) = read_trimmed(&dir.join("address").to_string_lossy()) {
            if mac != "00:00:00:00:00:00" {
                macs.push(mac.to_ascii_lowercase());
            }
        }
    }
    macs.sort();
    macs.dedup();
    macs
}

/// One component as bound by an enrollment or a license: salted hashes of its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundComponent {
    pub kind: ComponentKind,
    pub hashes: Vec<Digest>,
}

/// The match policy: every required component must match, and at least `min_others`
/// of the other bound components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchPolicy {
    pub required: Vec<ComponentKind>,
    pub min_others: u32,
}

impl MatchPolicy {
    /// Check the policy is satisfiable by `components`.
    pub fn validate(&self, components: &[BoundComponent]) -> Result<(), String> {
        for kind in &self.required {
            if !components.iter().any(|c| c.kind == *kind) {
                return Err(format!(
                    "required component {kind} is not among the bound components"
                ));
            }
        }
        let others = components
            .iter()
            .filter(|c| !self.required.contains(&c.kind))
            .count();
        if self.min_others as usize > others {
            return Err(format!(
                "the policy asks for {} of the other components but only {others} are bound",
                self.min_others
            ));
        }
        let mut kinds: Vec<_> = components.iter().map(|c| c.kind).collect();
        kinds.sort();
        kinds.dedup();
        if kinds.len() != components.len() {
            return Err("a component kind is bound twice".into());
        }
        Ok(())
    }

    pub fn describe(&self, components: &[BoundComponent]) -> String {
        let others = components.len() - self.required.len().min(components.len());
        let required: Vec<&str> = self.required.iter().map(|k| k.name()).collect();
        if required.is_empty() {
            format!("{} of {others} components", self.min_others)
        } else {
            format!(
                "{} + {} of {others} others",
                required.join(" + "),
                self.min_others
            )
        }
    }
}

/// Hash of one raw component value under an enrollment salt.
pub fn enrollment_hash(salt: &[u8; 16], kind: ComponentKind, value: &str) -> [u8; 32] {
    sha256(&[
        b"leasehold hardware v1\0",
        salt,
        kind.name().as_bytes(),
        b"\0",
        value.as_bytes(),
    ])
}

/// Re-hash of an enrollment hash under a license's own salt, so two licenses for one
/// node carry unrelated values.
pub fn license_hash(license_salt: &[u8; 16], enrollment_hash: &[u8; 32]) -> [u8; 32] {
    sha256(&[
        b"leasehold hardware license v1\0",
        license_salt,
        enrollment_hash,
    ])
}

/// Hash a profile's components under an enrollment salt, keeping only `kinds` when given.
pub fn bind(
    profile: &HardwareProfile,
    salt: &[u8; 16],
    kinds: Option<&[ComponentKind]>,
) -> Vec<BoundComponent> {
    profile
        .components
        .iter()
        .filter(|c| kinds.is_none_or(|k| k.contains(&c.kind)))
        .map(|c| BoundComponent {
            kind: c.kind,
            hashes: c
                .values
                .iter()
                .map(|v| Digest(enrollment_hash(salt, c.kind, v)))
                .collect(),
        })
        .collect()
}

/// How a machine compares with a binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchReport {
    pub matched: Vec<ComponentKind>,
    pub mismatched: Vec<ComponentKind>,
    pub required_missing: Vec<ComponentKind>,
    pub others_matched: u32,
    pub min_others: u32,
}

impl MatchReport {
    pub fn passes(&self) -> bool {
        self.required_missing.is_empty() && self.others_matched >= self.min_others
    }

    pub fn describe(&self) -> String {
        let names = |v: &[ComponentKind]| v.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.required_missing.is_empty() {
            parts.push(format!(
                "required component(s) differ: {}",
                names(&self.required_missing)
            ));
        }
        parts.push(format!(
            "{} of the other components match, {} needed",
            self.others_matched, self.min_others
        ));
        if !self.mismatched.is_empty() {
            parts.push(format!("differing: {}", names(&self.mismatched)));
        }
        parts.join("; ")
    }
}

/// Compare a machine with bound components: a component matches when any of the
/// machine's values hashes (through `hash`) to one of the bound hashes.
pub fn compare(
    components: &[BoundComponent],
    policy: &MatchPolicy,
    profile: &HardwareProfile,
    hash: impl Fn(ComponentKind, &str) -> [u8; 32],
) -> MatchReport {
    let mut report = MatchReport {
        matched: Vec::new(),
        mismatched: Vec::new(),
        required_missing: Vec::new(),
        others_matched: 0,
        min_others: policy.min_others,
    };
    for bound in components {
        let is_match = profile.get(bound.kind).is_some_and(|local| {
            local
                .values
                .iter()
                .any(|v| bound.hashes.contains(&Digest(hash(bound.kind, v))))
        });
        let required = policy.required.contains(&bound.kind);
        match (is_match, required) {
            (true, true) => report.matched.push(bound.kind),
            (true, false) => {
                report.matched.push(bound.kind);
                report.others_matched += 1;
            }
            (false, true) => {
                report.required_missing.push(bound.kind);
                report.mismatched.push(bound.kind);
            }
            (false, false) => report.mismatched.push(bound.kind),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(pairs: &[(ComponentKind, &str)]) -> HardwareProfile {
        HardwareProfile::from_pairs(pairs)
    }

    #[test]
    fn policy_required_plus_k_of_others() {
        use ComponentKind::*;
        let enrolled = profile(&[
            (MachineId, "m1"),
            (CpuModel, "cpu"),
            (MacAddress, "aa,bb"),
            (Hostname, "h1"),
        ]);
        let salt = [9u8; 16];
        let bound = bind(&enrolled, &salt, None);
        let policy = MatchPolicy {
            required: vec![MachineId],
            min_others: 2,
        };
        policy.validate(&bound).unwrap();
        let hash = |k, v: &str| enrollment_hash(&salt, k, v);

        // A NIC replaced and a new hostname: still cpu + one MAC match.
        let moved = profile(&[
            (MachineId, "m1"),
            (CpuModel, "cpu"),
            (MacAddress, "bb,cc"),
            (Hostname, "h2"),
        ]);
        assert!(compare(&bound, &policy, &moved, hash).passes());

        // Another machine-id fails whatever else matches.
        let cloned = profile(&[
            (MachineId, "m2"),
            (CpuModel, "cpu"),
            (MacAddress, "aa"),
            (Hostname, "h1"),
        ]);
        let report = compare(&bound, &policy, &cloned, hash);
        assert!(!report.passes());
        assert_eq!(report.required_missing, vec![MachineId]);

        // Only one other matching is not enough.
        let weak = profile(&[(MachineId, "m1"), (CpuModel, "other")]);
        let report = compare(&bound, &policy, &weak, hash);
        assert!(!report.passes());
        assert_eq!(report.others_matched, 0);
    }

    #[test]
    fn memory_class_rounds_up_to_power_of_two() {
        assert_eq!(memory_class(15_600_000_000), "16GiB");
        assert_eq!(memory_class(24 << 30), "32GiB");
    }

    #[test]
    fn this_machine_has_some_components() {
        let profile = HardwareProfile::collect();
        assert!(!profile.components.is_empty());
    }
}
