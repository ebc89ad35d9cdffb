//! Finding a model's plaintext where it must not be (files, a process's memory): by
//! the 4 KiB blocks of the model file that identify it. Blocks that repeat in the file,
//! or are low in entropy (the int32 arrays and vocabulary text that every GGUF of a
//! family shares), are left out, so another model's file is not mistaken for this one.

use std::collections::HashMap;

pub const BLOCK: usize = 4096;

pub struct IdentifyingBlocks {
    model: Vec<u8>,
    /// First 32 bytes of a block → the block indices starting with them.
    by_prefix: HashMap<[u8; 32], Vec<usize>>,
    count: usize,
}

/// Quantized weights use nearly every byte value; text and small-integer arrays do not.
fn high_entropy(block: &[u8]) -> bool {
    let mut seen = [false; 256];
    for &b in block {
        seen[b as usize] = true;
    }
    seen.iter().filter(|s| **s).count() >= 200
}

impl IdentifyingBlocks {
    pub fn of(model: Vec<u8>) -> IdentifyingBlocks {
        let mut occurrences: HashMap<&[u8], usize> = HashMap::new();
        for block in model.chunks_exact(BLOCK) {
            *occurrences.entry(block).or_default() += 1;
        }
        let mut by_prefix: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
        let mut count = 0;
        for (i, block) in model.chunks_exact(BLOCK).enumerate() {
            if occurrences[block] == 1 && high_entropy(block) {
                by_prefix
                    .entry(block[..32].try_into().unwrap())
                    .or_default()
                    .push(i);
                count += 1;
            }
        }
        IdentifyingBlocks {
            model,
            by_prefix,
            count,
        }
    }

    /// How many identifying blocks the model has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Identifying block `n` (in file order among them), for positive controls.
    pub fn nth(&self, n: usize) -> &[u8] {
        let mut all: Vec<usize> = self.by_prefix.values().flatten().copied().collect();
        all.sort_unstable();
        let i = all[n];
        &self.model[i * BLOCK..(i + 1) * BLOCK]
    }

    /// The first place in `haystack`, looked at every `stride` bytes, where an
    /// identifying block starts: (offset, block index in the model).
    pub fn find(&self, haystack: &[u8], stride: usize) -> Option<(usize, usize)> {
        if haystack.len() < BLOCK {
            return None;
        }
        (0..=haystack.len() - BLOCK)
            .step_by(stride)
            .find_map(|off| {
                let prefix: [u8; 32] = haystack[off..off + 32].try_into().unwrap();
                self.by_prefix.get(&prefix)?.iter().find_map(|&i| {
                    (haystack[off..off + BLOCK] == self.model[i * BLOCK..(i + 1) * BLOCK])
                        .then_some((off, i))
                })
            })
    }

    /// Scan the readable memory of process `pid` (needs root, or ptrace rights, for a
    /// non-dumpable process) every `stride` bytes: (region, offset, block) of the
    /// first identifying block found, and the bytes scanned.
    pub fn find_in_process(
        &self,
        pid: u32,
        stride: usize,
    ) -> (Option<(String, usize, usize)>, u64) {
        use std::io::{Read, Seek, SeekFrom};
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
        let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
        let mut scanned = 0u64;
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let name = line.split_whitespace().nth(5).unwrap_or("").to_string();
            if !perms.starts_with('r') || name == "[vvar]" || name == "[vsyscall]" {
                continue;
            }
            let (start, end) = range.split_once('-').unwrap();
            let start = u64::from_str_radix(start, 16).unwrap();
            let end = u64::from_str_radix(end, 16).unwrap();
            if end - start > 8 << 30 {
                continue; // a reservation, not memory in use
            }
            let mut bytes = vec![0u8; (end - start) as usize];
            if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut bytes).is_err() {
                continue;
            }
            scanned += bytes.len() as u64;
            if let Some((off, block)) = self.find(&bytes, stride) {
                return (Some((line.to_string(), off, block)), scanned);
            }
        }
        (None, scanned)
    }
}
