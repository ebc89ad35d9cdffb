//! The hardware fingerprint a license binds: components read from this machine, hashed
//! with salts so neither enrollments nor licenses reveal serial numbers, and a match
//! policy "all required components + at least k of the others".
//!
//! Component stability (see docs/HARDWARE.md): `machine-id` is stable across reboots,
//! VMs and containers that bind-mount it; `product-uuid` is readable by root only and
//! absent in many VMs; `mac-address` changes when NICs are replaced or a VM is
//! recreated; `memory-class` survives small changes (rounded up to a power of two GiB);
//! `cpu-model` changes with migration to other hardware; `hostname` is the least stable.
//!
//! A copy of the disk carries `machine-id` and `hostname`, and a second box of the same
//! model shows the same `cpu-model` and `memory-class`. What a clone lacks are the
//! components of this box itself ([`ComponentKind::CLONE_RESISTANT`]): `product-uuid`,
//! `root-disk-serial` and `default-route-mac`, which the default policy requires where
//! they are readable. Each reader says why when a component cannot be read.

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
    RootDiskSerial,
    DefaultRouteMac,
    /// TPM nodes: the hash of the TPM's endorsement key.
    TpmEk,
}

impl ComponentKind {
    pub const ALL: [ComponentKind; 9] = [
        ComponentKind::MachineId,
        ComponentKind::ProductUuid,
        ComponentKind::RootDiskSerial,
        ComponentKind::DefaultRouteMac,
        ComponentKind::CpuModel,
        ComponentKind::MemoryClass,
        ComponentKind::MacAddress,
        ComponentKind::Hostname,
        ComponentKind::TpmEk,
    ];

    /// Components of the box itself, which a copy of its disk does not carry: the
    /// default policy requires those that are readable.
    pub const CLONE_RESISTANT: [ComponentKind; 3] = [
        ComponentKind::ProductUuid,
        ComponentKind::RootDiskSerial,
        ComponentKind::DefaultRouteMac,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::MachineId => "machine-id",
            ComponentKind::ProductUuid => "product-uuid",
            ComponentKind::CpuModel => "cpu-model",
            ComponentKind::MemoryClass => "memory-class",
            ComponentKind::MacAddress => "mac-address",
            ComponentKind::Hostname => "hostname",
            ComponentKind::RootDiskSerial => "root-disk-serial",
            ComponentKind::DefaultRouteMac => "default-route-mac",
            ComponentKind::TpmEk => "tpm-ek",
        }
    }

    /// What a clone of this node (its disk copied into another box) shows for this kind.
    pub fn on_a_clone(self) -> OnAClone {
        match self {
            ComponentKind::MachineId | ComponentKind::Hostname => OnAClone::CopiedWithTheDisk,
            ComponentKind::CpuModel | ComponentKind::MemoryClass => OnAClone::SameOnTheSameModel,
            ComponentKind::ProductUuid
            | ComponentKind::RootDiskSerial
            | ComponentKind::DefaultRouteMac
            | ComponentKind::MacAddress
            | ComponentKind::TpmEk => OnAClone::Differs,
        }
    }
}

/// How a component fares when a node's disk is copied into another box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAClone {
    /// The copy carries it (it lives on the disk).
    CopiedWithTheDisk,
    /// Every box of the same model shows it.
    SameOnTheSameModel,
    /// It belongs to this box (unless whoever controls the other box sets it to match:
    /// see docs/HARDWARE.md).
    Differs,
}

impl fmt::Display for OnAClone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnAClone::CopiedWithTheDisk => "copied with the disk",
            OnAClone::SameOnTheSameModel => "same on a box of the same model",
            OnAClone::Differs => "differs on another box",
        })
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

/// A component this machine does not offer, and why (for people: `leasehold
/// fingerprint` and `enroll` show it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub kind: ComponentKind,
    pub reason: String,
}

/// The raw components of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HardwareProfile {
    pub components: Vec<Component>,
    /// The kinds that could not be read here, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Unreadable>,
}

impl HardwareProfile {
    /// Read this machine's components. Unreadable ones are left out, and listed in
    /// `unreadable` with the reason. `tpm` names the TPM whose endorsement key is the
    /// `tpm-ek` component (TPM nodes); without it, `tpm-ek` is not read.
    pub fn collect(tpm: Option<&str>) -> HardwareProfile {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let (sys, proc) = (Path::new("/sys"), Path::new("/proc"));
        let found = |values: Option<String>, missing: &str| {
            values.map(|v| vec![v]).ok_or_else(|| missing.to_string())
        };
        let reads: [(ComponentKind, Result<Vec<String>, String>); 9] = [
            (
                ComponentKind::MachineId,
                found(
                    read_trimmed(Path::new("/etc/machine-id"))
                        .or_else(|| read_trimmed(Path::new("/var/lib/dbus/machine-id"))),
                    "neither /etc/machine-id nor /var/lib/dbus/machine-id is readable \
                     (systemd-machine-id-setup creates it)",
                ),
            ),
            (ComponentKind::ProductUuid, product_uuid(sys)),
            (ComponentKind::RootDiskSerial, root_disk_serials(sys, proc)),
            (
                ComponentKind::DefaultRouteMac,
                default_route_macs(sys, proc),
            ),
            (
                ComponentKind::CpuModel,
                found(
                    system.cpus().first().map(|c| c.brand().trim().to_string()),
                    "the CPU reports no brand string",
                ),
            ),
            (
                ComponentKind::MemoryClass,
                found(
                    Some(memory_class(system.total_memory())).filter(|c| !c.is_empty()),
                    "total memory is unknown",
                ),
            ),
            (
                ComponentKind::MacAddress,
                Some(physical_macs(sys))
                    .filter(|macs| !macs.is_empty())
                    .ok_or_else(|| {
                        "no network interface backed by a device (virtual ones are skipped)"
                            .to_string()
                    }),
            ),
            (
                ComponentKind::Hostname,
                found(System::host_name(), "the kernel has no host name"),
            ),
            (ComponentKind::TpmEk, tpm_endorsement_key(tpm)),
        ];
        let mut profile = HardwareProfile::default();
        for (kind, read) in reads {
            let values = read.map(|v| v.into_iter().filter(|v| !v.is_empty()).collect::<Vec<_>>());
            match values {
                Ok(values) if !values.is_empty() => {
                    profile.components.push(Component { kind, values })
                }
                Ok(_) => profile.unreadable.push(Unreadable {
                    kind,
                    reason: "it reads empty".into(),
                }),
                Err(reason) => profile.unreadable.push(Unreadable { kind, reason }),
            }
        }
        profile
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
            unreadable: Vec::new(),
        }
    }

    /// Why `kind` is not in this profile, for messages.
    pub fn why_unreadable(&self, kind: ComponentKind) -> String {
        self.unreadable
            .iter()
            .find(|u| u.kind == kind)
            .map_or_else(|| "not found".to_string(), |u| u.reason.clone())
    }

    pub fn get(&self, kind: ComponentKind) -> Option<&Component> {
        self.components.iter().find(|c| c.kind == kind)
    }
}

/// `tpm-ek`: the hex SHA-256 of the endorsement key's public area of the TPM at `tcti`.
fn tpm_endorsement_key(tcti: Option<&str>) -> Result<Vec<String>, String> {
    let Some(tcti) = tcti else {
        return Err(
            "not read: only TPM nodes bind their TPM's endorsement key (a file-key node, or no TPM here)"
                .into(),
        );
    };
    #[cfg(feature = "tpm")]
    {
        super::tpm::endorsement_key_sha256(tcti)
            .map(|hash| vec![hex::encode(hash)])
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "tpm"))]
    {
        Err(format!(
            "the TPM at {tcti} cannot be read: this build has no TPM support (cargo feature `tpm`)"
        ))
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

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Values a firmware writes on every box it ships in, which identify nothing.
const PLACEHOLDER_UUIDS: [&str; 3] = [
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
];

/// `product-uuid`: the DMI system UUID (SMBIOS type 1), lower-cased.
fn product_uuid(sys: &Path) -> Result<Vec<String>, String> {
    let path = sys.join("class/dmi/id/product_uuid");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{} does not exist (no DMI table: common in VMs without SMBIOS and in containers)",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!(
                "{} is readable by root only: enroll and serve as the same user",
                path.display()
            ))
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let uuid = text.trim().to_ascii_lowercase();
    if uuid.is_empty() || PLACEHOLDER_UUIDS.contains(&uuid.as_str()) {
        return Err(format!(
            "{} holds a placeholder ({uuid:?}) that the firmware gives every box",
            path.display()
        ));
    }
    Ok(vec![uuid])
}

/// `root-disk-serial`: the serial or WWN of the disk(s) holding `/`.
fn root_disk_serials(sys: &Path, proc: &Path) -> Result<Vec<String>, String> {
    let (major, minor) = root_device(proc)?;
    disk_serials(sys, major, minor)
}

/// The block device of the root file system: from `stat /`, or, for file systems with
/// an anonymous device number (btrfs, overlay), the mount source of `/` when it is a
/// device node.
fn root_device(proc: &Path) -> Result<(u32, u32), String> {
    use rustix::fs::{major, minor, stat};
    let root = stat("/").map_err(|e| format!("cannot stat /: {e}"))?;
    if major(root.st_dev) != 0 {
        return Ok((major(root.st_dev), minor(root.st_dev)));
    }
    let mountinfo = std::fs::read_to_string(proc.join("self/mountinfo"))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let source = root_mount_source(&mountinfo)
        .ok_or("the root file system is not on a block device (an overlay or tmpfs root)")?;
    let device = stat(source.as_str())
        .map_err(|e| format!("the root file system's source {source} cannot be read: {e}"))?;
    Ok((major(device.st_rdev), minor(device.st_rdev)))
}

/// The mount source of the last mount on `/` in a mountinfo table, when it is a device
/// node (`/dev/...`).
fn root_mount_source(mountinfo: &str) -> Option<String> {
    mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some("/"))
        .filter_map(|line| line.split(" - ").nth(1)?.split(' ').nth(1))
        .next_back()
        .filter(|source| source.starts_with("/dev/"))
        .map(String::from)
}

/// The serials of the disk behind block device `major:minor`: the disk itself for a
/// partition, every underlying disk for device-mapper (LVM, dm-crypt) and md RAID.
fn disk_serials(sys: &Path, major: u32, minor: u32) -> Result<Vec<String>, String> {
    let device = sys.join(format!("dev/block/{major}:{minor}"));
    let device = device.canonicalize().map_err(|e| {
        format!(
            "the root file system's device {major}:{minor} is not in {}: {e}",
            sys.join("dev/block").display()
        )
    })?;
    let mut serials = Vec::new();
    let mut unnamed = Vec::new();
    collect_disk_serials(&device, 0, &mut serials, &mut unnamed);
    serials.sort();
    serials.dedup();
    if serials.is_empty() {
        return Err(format!(
            "the root disk ({}) reports no serial or WWN (common for virtual disks)",
            unnamed.join(", ")
        ));
    }
    Ok(serials)
}

fn collect_disk_serials(
    device: &Path,
    depth: u32,
    serials: &mut Vec<String>,
    unnamed: &mut Vec<String>,
) {
    // A partition's disk is its parent directory in sysfs.
    let disk = if device.join("partition").exists() {
        device.parent().unwrap_or(device)
    } else {
        device
    };
    let slaves: Vec<_> = std::fs::read_dir(disk.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.path().canonicalize().ok())
        .collect();
    if !slaves.is_empty() && depth < 8 {
        for slave in slaves {
            collect_disk_serials(&slave, depth + 1, serials, unnamed);
        }
        return;
    }
    let serial = ["wwid", "device/wwid", "serial", "device/serial"]
        .iter()
        .find_map(|file| read_trimmed(&disk.join(file)));
    match serial {
        Some(serial) => serials.push(serial),
        None => unnamed.push(disk.file_name().map_or_else(
            || disk.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )),
    }
}

/// `default-route-mac`: the MAC of the interface carrying the default route (IPv4,
/// else IPv6), or of the physical interfaces under it when it is a bridge, bond or VLAN.
fn default_route_macs(sys: &Path, proc: &Path) -> Result<Vec<String>, String> {
    let interface = default_route_interface(proc)?;
    let mut macs = Vec::new();
    physical_macs_under(sys, &interface, 0, &mut macs);
    macs.sort();
    macs.dedup();
    if macs.is_empty() {
        return Err(format!(
            "the default route goes through {interface}, a virtual interface with no \
             physical one under it (a container's veth, a tunnel)"
        ));
    }
    Ok(macs)
}

/// The interface of the default route with the lowest metric, IPv4 first.
fn default_route_interface(proc: &Path) -> Result<String, String> {
    let ipv4 = std::fs::read_to_string(proc.join("net/route")).unwrap_or_default();
    let ipv6 = std::fs::read_to_string(proc.join("net/ipv6_route")).unwrap_or_default();
    default_ipv4_interface(&ipv4)
        .or_else(|| default_ipv6_interface(&ipv6))
        .ok_or_else(|| "this machine has no default route".to_string())
}

/// `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`,
/// hex fields; a default route has destination and mask 0 and is up (flag 0x1).
fn default_ipv4_interface(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let metric: u32 = f.get(6)?.parse().ok()?;
            (f[1] == "00000000" && f.get(7)? == &"00000000" && flags & 1 == 1 && f[0] != "lo")
                .then(|| (metric, f[0].to_string()))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, interface)| interface)
}

/// `/proc/net/ipv6_route`: `dest dest_len src src_len next_hop metric refcnt use flags
/// iface`, hex fields; a default route is `::/0`, up (flag 0x1), not a reject route.
fn default_ipv6_interface(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let metric = u32::from_str_radix(f.get(5)?, 16).ok()?;
            let flags = u32::from_str_radix(f.get(8)?, 16).ok()?;
            let default = f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            const UP: u32 = 0x1;
            const REJECT: u32 = 0x200;
            (default && flags & UP != 0 && flags & REJECT == 0 && f[9] != "lo")
                .then(|| (metric, f[9].to_string()))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, interface)| interface)
}

/// The MACs of `interface` when it is backed by a device, else of the physical
/// interfaces below it (`lower_*` links: bridge ports, bond slaves, a VLAN's parent).
fn physical_macs_under(sys: &Path, interface: &str, depth: u32, macs: &mut Vec<String>) {
    let dir = sys.join("class/net").join(interface);
    if dir.join("device").exists() {
        if let Some(mac) = interface_mac(&dir) {
            macs.push(mac);
        }
        return;
    }
    if depth >= 8 {
        return;
    }
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(lower) = name.strip_prefix("lower_") {
            physical_macs_under(sys, lower, depth + 1, macs);
        }
    }
}

fn interface_mac(dir: &Path) -> Option<String> {
    read_trimmed(&dir.join("address"))
        .map(|mac| mac.to_ascii_lowercase())
        .filter(|mac| mac != "00:00:00:00:00:00")
}

/// MAC addresses of physical network interfaces (those backed by a device), sorted.
fn physical_macs(sys: &Path) -> Vec<String> {
    let mut macs: Vec<String> = std::fs::read_dir(sys.join("class/net"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| dir.join("device").exists())
        .filter_map(|dir| interface_mac(&dir))
        .collect();
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
        let profile = HardwareProfile::collect(None);
        assert!(!profile.components.is_empty());
        // Every kind is either read or explained.
        for kind in ComponentKind::ALL {
            let read = profile.get(kind).is_some();
            let explained = profile.unreadable.iter().any(|u| u.kind == kind);
            assert!(read != explained, "{kind}: {profile:?}");
        }
    }

    /// A fake `/sys`: files with contents and symbolic links, under a temporary root.
    fn fake_tree(files: &[(&str, &str)], links: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        for (link, target) in links {
            let link = root.path().join(link);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, link).unwrap();
        }
        root
    }

    #[test]
    fn the_default_route_is_the_lowest_metric_up_route_to_anywhere() {
        let ipv4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    wlan0\t00000000\t010200C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                    eno1\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                    eth9\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_ipv4_interface(ipv4).as_deref(), Some("eno1"));
        assert_eq!(default_ipv4_interface("Iface\tDestination\n"), None);

        let zero = "00000000000000000000000000000000";
        let ipv6 = format!(
            "{zero} 00 {zero} 00 {zero} ffffffff 00000001 00000000 00200200       lo\n\
             fe800000000000000000000000000000 40 {zero} 00 {zero} 00000100 00000001 00000000 00000001     eth0\n\
             {zero} 00 {zero} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1\n"
        );
        assert_eq!(default_ipv6_interface(&ipv6).as_deref(), Some("eth1"));
    }

    #[test]
    fn a_bridge_or_bond_on_the_default_route_gives_the_macs_of_its_physical_ports() {
        let sys = fake_tree(
            &[
                ("class/net/eno1/address", "3C:EC:EF:00:00:01\n"),
                ("class/net/eno1/device/vendor", "0x8086\n"),
                ("class/net/eno2/address", "3c:ec:ef:00:00:02\n"),
                ("class/net/eno2/device/vendor", "0x8086\n"),
                ("class/net/br0/address", "3c:ec:ef:00:00:01\n"),
                ("class/net/veth0/address", "fe:aa:00:00:00:01\n"),
            ],
            &[
                ("class/net/br0/lower_bond0", "../bond0"),
                ("class/net/bond0/lower_eno1", "../eno1"),
                ("class/net/bond0/lower_eno2", "../eno2"),
            ],
        );
        let mut macs = Vec::new();
        physical_macs_under(sys.path(), "br0", 0, &mut macs);
        macs.sort();
        assert_eq!(macs, ["3c:ec:ef:00:00:01", "3c:ec:ef:00:00:02"]);
        let mut none = Vec::new();
        physical_macs_under(sys.path(), "veth0", 0, &mut none);
        assert!(none.is_empty());
        assert_eq!(
            physical_macs(sys.path()),
            ["3c:ec:ef:00:00:01", "3c:ec:ef:00:00:02"]
        );
    }

    #[test]
    fn the_root_disk_serial_is_the_disk_of_the_root_partition_or_of_its_lvm_volumes() {
        let sys = fake_tree(
            &[
                ("devices/pci/nvme/nvme0n1/wwid", "eui.0025388b91b2c4a1\n"),
                ("devices/pci/nvme/nvme0n1/device/serial", "S4EWNX0R123456\n"),
                ("devices/pci/nvme/nvme0n1/nvme0n1p2/partition", "2\n"),
                ("devices/pci/ata1/sda/device/wwid", "naa.5000c500a1b2c3d4\n"),
                ("devices/pci/ata1/sda/sda1/partition", "1\n"),
                ("devices/pci/ata2/sdb/device/vendor", "ATA\n"),
                ("devices/virtual/block/dm-0/dm/name", "vg-root\n"),
                ("devices/virtual/block/dm-1/dm/name", "vg-bare\n"),
            ],
            &[
                (
                    "dev/block/259:2",
                    "../../devices/pci/nvme/nvme0n1/nvme0n1p2",
                ),
                ("dev/block/253:0", "../../devices/virtual/block/dm-0"),
                ("dev/block/253:1", "../../devices/virtual/block/dm-1"),
                (
                    "devices/virtual/block/dm-0/slaves/nvme0n1p2",
                    "../../../../pci/nvme/nvme0n1/nvme0n1p2",
                ),
                (
                    "devices/virtual/block/dm-0/slaves/sda1",
                    "../../../../pci/ata1/sda/sda1",
                ),
                (
                    "devices/virtual/block/dm-1/slaves/sdb",
                    "../../../../pci/ata2/sdb",
                ),
            ],
        );
        // A partition: its disk's WWN (before the controller serial).
        assert_eq!(
            disk_serials(sys.path(), 259, 2).unwrap(),
            ["eui.0025388b91b2c4a1"]
        );
        // LVM across two disks: both, either one matching counts.
        assert_eq!(
            disk_serials(sys.path(), 253, 0).unwrap(),
            ["eui.0025388b91b2c4a1", "naa.5000c500a1b2c3d4"]
        );
        // A disk that reports nothing is named in the reason.
        let err = disk_serials(sys.path(), 253, 1).unwrap_err();
        assert!(err.contains("(sdb) reports no serial or WWN"), "{err}");
        let err = disk_serials(sys.path(), 7, 0).unwrap_err();
        assert!(err.contains("device 7:0 is not in"), "{err}");
    }

    #[test]
    fn the_root_mount_source_is_the_last_mount_on_slash() {
        let mountinfo = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                         27 1 0:31 / / rw,relatime - btrfs /dev/nvme0n1p2 rw,subvol=/@\n";
        assert_eq!(
            root_mount_source(mountinfo).as_deref(),
            Some("/dev/nvme0n1p2")
        );
        let overlay = "27 1 0:31 / / rw - overlay overlay rw,lowerdir=/l\n";
        assert_eq!(root_mount_source(overlay), None);
    }

    #[test]
    fn product_uuid_placeholders_and_missing_tables_are_explained() {
        let sys = fake_tree(
            &[(
                "class/dmi/id/product_uuid",
                "03000200-0400-0500-0006-000700080009\n",
            )],
            &[],
        );
        let err = product_uuid(sys.path()).unwrap_err();
        assert!(err.contains("placeholder"), "{err}");
        std::fs::write(
            sys.path().join("class/dmi/id/product_uuid"),
            "4C4C4544-0042-3510-8052-B4C04F564E32\n",
        )
        .unwrap();
        assert_eq!(
            product_uuid(sys.path()).unwrap(),
            ["4c4c4544-0042-3510-8052-b4c04f564e32"]
        );
        let empty = fake_tree(&[], &[]);
        let err = product_uuid(empty.path()).unwrap_err();
        assert!(err.contains("no DMI table"), "{err}");
    }
}
