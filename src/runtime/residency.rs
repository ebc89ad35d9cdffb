//! The weights exist once in memory.
//!
//! llama.cpp maps the decrypted memfd and uses most tensors in place, but the CPU
//! kernels copy some (Q4_0, Q4_K, IQ4_NL, … on x86) into repacked layouts in buffers of
//! their own while the model loads. The memfd pages of those tensors are then never read
//! again, yet still hold the plaintext a second time (for a 7B Q4_0 model, gigabytes).
//!
//! After loading, one throw-away decode reports where each weight tensor is read from
//! (`sys::weights_read_by_one_decode`: ggml's scheduler shows it every node of the
//! graph, which is then stopped after its first node). A tensor read from an address outside every
//! mapping of the memfd was copied, and its file range is punched out of the memfd. A
//! tensor read in place, a tensor the decode did not read, and every byte not wholly
//! inside a run of copied tensors stay: only whole pages strictly inside such a run go.

use std::ops::Range;

use super::maps::{file_mappings, Mapping};
use crate::sys::{GgufTensor, WeightRead};

/// llama.cpp reads tensors larger than this from the mapping on demand ("lazy read"),
/// whatever buffer they sit in: never released.
const LAZY_READ_MIN: u64 = 4 << 30;

/// The mappings of the file with inode `inode` whose name starts with `name_prefix`
/// (`/memfd:leasehold-weights`), from the text of /proc/self/maps.
pub fn mappings_of(maps: &str, inode: u64, name_prefix: &str) -> Vec<Mapping> {
    file_mappings(maps)
        .filter(|m| m.inode == inode && m.path.starts_with(name_prefix))
        .collect()
}

/// Where the decode read the weights from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Bytes of tensors read in place from the memfd.
    pub in_place: u64,
    /// Bytes of tensors llama.cpp copied into its own buffers.
    pub copied: u64,
    /// Bytes of tensors the decode did not read (kept).
    pub unread: u64,
    /// File ranges, page-aligned, that no tensor in use is read from.
    pub releasable: Vec<Range<u64>>,
}

impl Placement {
    pub fn releasable_bytes(&self) -> u64 {
        self.releasable.iter().map(|r| r.end - r.start).sum()
    }
}

/// Decide which file ranges of the memfd can be released.
pub fn placement(
    tensors: &[GgufTensor],
    reads: &[WeightRead],
    mappings: &[Mapping],
    page: u64,
) -> Placement {
    let read_at: std::collections::HashMap<&str, usize> =
        reads.iter().map(|r| (r.name.as_str(), r.address)).collect();
    let mut sorted: Vec<&GgufTensor> = tensors.iter().collect();
    sorted.sort_by_key(|t| t.offset);

    let mut placement = Placement::default();
    // The run of consecutive copied tensors being built, as a file range.
    let mut run: Option<Range<u64>> = None;
    let close = |run: &mut Option<Range<u64>>, placement: &mut Placement| {
        if let Some(r) = run.take() {
            let start = r.start.div_ceil(page) * page;
            let end = r.end / page * page;
            if start < end {
                placement.releasable.push(start..end);
            }
        }
    };
    for tensor in sorted {
        let copied = match read_at.get(tensor.name.as_str()) {
            None => {
                placement.unread += tensor.size;
                false
            }
            Some(&address) => {
                let in_place = mappings.iter().any(|m| (m.start..m.end).contains(&address));
                if in_place {
                    placement.in_place += tensor.size;
                } else {
                    placement.copied += tensor.size;
                }
                !in_place && tensor.size <= LAZY_READ_MIN
            }
        };
        if copied {
            let end = tensor.offset + tensor.size;
            run = Some(match run.take() {
                Some(r) => r.start..end,
                None => tensor.offset..end,
            });
        } else {
            close(&mut run, &mut placement);
        }
    }
    close(&mut run, &mut placement);
    placement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, offset: u64, size: u64) -> GgufTensor {
        GgufTensor {
            name: name.into(),
            offset,
            size,
        }
    }
    fn r(name: &str, address: usize) -> WeightRead {
        WeightRead {
            name: name.into(),
            address,
        }
    }

    fn map() -> Mapping {
        Mapping {
            start: 0x10_0000,
            end: 0x20_0000,
            offset: 0,
            device: Some((0, 1)),
            inode: 7,
            path: "/memfd:leasehold-weights (deleted)".into(),
        }
    }

    #[test]
    fn only_whole_pages_inside_runs_of_copied_tensors_are_released() {
        // a (in place) | b, c (copied, adjacent) | d (in place) | e (unread) | f (copied)
        let tensors = [
            t("a", 100, 5000),
            t("b", 5100, 10_000),
            t("c", 15_100, 9000),
            t("d", 24_100, 100),
            t("e", 24_200, 20_000),
            t("f", 44_200, 30_000),
        ];
        let reads = [
            r("a", 0x10_0000 + 100),
            r("b", 0x9000_0000),
            r("c", 0x9100_0000),
            r("d", 0x10_0000 + 24_100),
            r("f", 0x9200_0000),
        ];
        let p = placement(&tensors, &reads, &[map()], 4096);
        assert_eq!(p.in_place, 5100);
        assert_eq!(p.copied, 49_000);
        assert_eq!(p.unread, 20_000);
        // b..c spans 5100..24100: pages 8192..20480; f spans 44200..74200: 45056..73728.
        assert_eq!(p.releasable, vec![8192..20_480, 45_056..73_728]);
        for range in &p.releasable {
            for kept in [&tensors[0], &tensors[3], &tensors[4]] {
                assert!(range.end <= kept.offset || range.start >= kept.offset + kept.size);
            }
        }
    }

    #[test]
    fn nothing_is_released_when_everything_is_read_in_place_or_unread() {
        let tensors = [t("a", 0, 1 << 20), t("b", 1 << 20, 1 << 20)];
        let p = placement(&tensors, &[r("a", 0x10_0000)], &[map()], 4096);
        assert!(p.releasable.is_empty());
        assert_eq!((p.in_place, p.unread, p.copied), (1 << 20, 1 << 20, 0));
    }

    #[test]
    fn maps_lines_of_the_memfd_are_parsed() {
        let maps = "\
7f0000000000-7f0000100000 r--p 00000000 00:01 4242 /memfd:leasehold-weights (deleted)
7f0000200000-7f0000300000 r--p 00200000 00:01 4242 /memfd:leasehold-weights (deleted)
7f0000400000-7f0000500000 r--p 00000000 00:01 999 /memfd:leasehold-weights (deleted)
7f0000600000-7f0000700000 r-xp 00000000 fd:01 4242 /usr/lib/libc.so.6
";
        let found: Vec<(usize, usize, u64)> = mappings_of(maps, 4242, "/memfd:leasehold-weights")
            .iter()
            .map(|m| (m.start, m.end, m.offset))
            .collect();
        assert_eq!(
            found,
            vec![
                (0x7f00_0000_0000, 0x7f00_0010_0000, 0),
                (0x7f00_0020_0000, 0x7f00_0030_0000, 0x20_0000),
            ]
        );
    }
}
