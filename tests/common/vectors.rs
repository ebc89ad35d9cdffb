//! The vector node's hardware (docs/vectors), shared with examples/make_test_vectors.rs.

use leasehold::node::hardware::{ComponentKind, HardwareProfile};

pub fn vector_profile() -> HardwareProfile {
    use ComponentKind::*;
    HardwareProfile::from_pairs(&[
        (MachineId, "00112233445566778899aabbccddeeff"),
        (CpuModel, "Vector CPU"),
        (MemoryClass, "16GiB"),
        (Hostname, "vector-node"),
    ])
}
