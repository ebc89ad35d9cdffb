//! Lines of `/proc/self/maps`, read the same way by its two readers: the library check
//! (runtime::backends: which file a mapping comes from, by device and inode) and the
//! weights' residency (runtime::residency: which addresses map the weights' memfd).

/// One mapping of a file in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    /// File offset of `start`.
    pub offset: u64,
    /// `(major, minor)` of the file's device.
    pub device: Option<(u64, u64)>,
    pub inode: u64,
    /// The file's path as the kernel writes it (a deleted file ends in ` (deleted)`).
    pub path: String,
}

/// The mappings of files (lines whose path starts with `/`). A number that does not
/// parse reads as 0 (no address range, no inode), so a line is never dropped: a reader
/// that checks every file it cares about still sees it.
pub fn file_mappings(text: &str) -> impl Iterator<Item = Mapping> + '_ {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[5].starts_with('/') {
            return None;
        }
        let hex = |text: &str| u64::from_str_radix(text, 16).unwrap_or(0);
        let (start, end) = fields[0].split_once('-').unwrap_or(("0", "0"));
        Some(Mapping {
            start: hex(start) as usize,
            end: hex(end) as usize,
            offset: hex(fields[2]),
            device: parse_device(fields[3]),
            inode: fields[4].parse().unwrap_or(0),
            path: fields[5..].join(" "),
        })
    })
}

/// The kernel writes the device as `major:minor` in hex, at least two digits each.
fn parse_device(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.split_once(':')?;
    Some((
        u64::from_str_radix(major, 16).ok()?,
        u64::from_str_radix(minor, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_compare_as_numbers() {
        assert_eq!(parse_device("fd:01"), Some((0xfd, 1)));
        assert_eq!(parse_device("103:02"), Some((0x103, 2)));
        assert_ne!(parse_device("fd:01"), parse_device("fd:02"));
        assert_eq!(parse_device("x"), None);
    }

    #[test]
    fn file_lines_are_parsed_and_none_is_dropped() {
        let maps = "\
7f0000000000-7f0000100000 r--p 00200000 00:01 4242 /memfd:leasehold-weights (deleted)
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 [heap]
7f0000600000-7f0000700000 r-xp 00000000 fd:01 bad /usr/lib/libllama.so
";
        let all: Vec<Mapping> = file_mappings(maps).collect();
        assert_eq!(
            all,
            vec![
                Mapping {
                    start: 0x7f00_0000_0000,
                    end: 0x7f00_0010_0000,
                    offset: 0x20_0000,
                    device: Some((0, 1)),
                    inode: 4242,
                    path: "/memfd:leasehold-weights (deleted)".into(),
                },
                Mapping {
                    start: 0x7f00_0060_0000,
                    end: 0x7f00_0070_0000,
                    offset: 0,
                    device: Some((0xfd, 1)),
                    inode: 0,
                    path: "/usr/lib/libllama.so".into(),
                },
            ]
        );
    }
}
