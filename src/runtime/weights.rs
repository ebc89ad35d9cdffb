//! Decrypted weights, in memory only: an anonymous memfd that llama.cpp maps through
//! `/proc/self/fd/N`, so the tensors point into these pages (zero copy).
//!
//! The plaintext never has a name in a storage-backed filesystem. Decryption goes
//! straight from a map of the sealed file into a map of the memfd, segments in
//! parallel, each thread faulting in its own range; no intermediate buffer.
//!
//! Wiping (after lapse) zeroes the pages, punches them out of the memfd and closes it.
//! The caller must have dropped every llama.cpp context and model first: truncating or
//! punching a file llama.cpp still maps would fault (SIGBUS) on its next access.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use rustix::fs::{FallocateFlags, MemfdFlags};

use crate::crypto::ContentKey;
use crate::seal::{Progress, SealError, SealedModel};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot create an anonymous memory file (memfd) for the weights: {0}; leasehold needs Linux 3.17 or later and memfd allowed by the sandbox")]
    Memfd(std::io::Error),
    #[error("cannot size or map the in-memory weights ({0} bytes): {1}")]
    Map(u64, std::io::Error),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// How the memfd pages are backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageBacking {
    /// Transparent huge pages requested (shmem_enabled allows `advise`).
    HugePagesAdvised,
    /// 4 KiB pages.
    Regular,
}

/// A model's plaintext in an anonymous memfd.
pub struct DecryptedWeights {
    file: File,
    len: u64,
    backing: PageBacking,
}

fn create_memfd() -> Result<File, WeightsError> {
    // NOEXEC_SEAL (Linux 6.3+) forbids ever making the memfd executable; older kernels
    // reject the flag, so fall back. No write/shrink seals: they would block the wipe.
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL;
    let fd = match rustix::fs::memfd_create("leasehold-weights", flags) {
        Ok(fd) => fd,
        Err(_) => rustix::fs::memfd_create("leasehold-weights", MemfdFlags::CLOEXEC)
            .map_err(|e| WeightsError::Memfd(e.into()))?,
    };
    Ok(File::from(fd))
}

/// Does the kernel let us ask for huge pages on shmem (memfd) mappings?
fn shmem_huge_pages_advisable() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .map(|s| {
            // The active choice is in brackets: "always within_size [advise] never deny force".
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .is_some_and(|w| matches!(w, "[always]" | "[within_size]" | "[advise]" | "[force]"))
        })
        .unwrap_or(false)
}

impl DecryptedWeights {
    /// Decrypt `sealed` with `key` into a new memfd, in parallel on the current rayon pool.
    pub fn decrypt(
        sealed: &SealedModel,
        key: &ContentKey,
        progress: Progress,
    ) -> Result<DecryptedWeights, WeightsError> {
        let len = sealed.header().plaintext_len;
        let file = create_memfd()?;
        file.set_len(len).map_err(|e| WeightsError::Map(len, e))?;
        let mut weights = DecryptedWeights {
            file,
            len,
            backing: PageBacking::Regular,
        };
        {
            let mut map =
                crate::sys::map_memfd(&weights.file).map_err(|e| WeightsError::Map(len, e))?;
            if shmem_huge_pages_advisable() && map.advise(memmap2::Advice::HugePage).is_ok() {
                weights.backing = PageBacking::HugePagesAdvised;
            }
            if let Err(e) = sealed.decrypt_into(key, &mut map, progress) {
                // `weights` is wiped on drop; the failing segment was zeroed already.
                drop(map);
                return Err(e.into());
            }
        }
        Ok(weights)
    }

    /// The path llama.cpp opens: `/proc/self/fd/N`. Valid while `self` lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn backing(&self) -> PageBacking {
        self.backing
    }

    /// Zero the plaintext, release its pages and close the memfd. Every llama.cpp
    /// model and context using it must be dropped before.
    pub fn wipe(self) {
        drop(self);
    }

    /// The memfd's inode, to find llama.cpp's mappings of it in /proc/self/maps.
    pub fn inode(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(self.file.metadata()?.ino())
    }

    /// Release the pages of `ranges` (page-aligned file ranges no tensor in use is read
    /// from: runtime::residency): punched out of the memfd, so the plaintext in them no
    /// longer exists. Returns the bytes released.
    pub fn release(&self, ranges: &[std::ops::Range<u64>]) -> std::io::Result<u64> {
        let mut released = 0;
        for range in ranges {
            let end = range.end.min(self.len);
            if range.start >= end {
                continue;
            }
            rustix::fs::fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                range.start,
                end - range.start,
            )?;
            released += end - range.start;
        }
        Ok(released)
    }

    /// The file ranges that hold pages (not holes).
    fn data_ranges(&self) -> Vec<std::ops::Range<u64>> {
        use rustix::fs::SeekFrom;
        let mut ranges = Vec::new();
        let mut pos = 0;
        while pos < self.len {
            let start = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(start) => start,
                Err(rustix::io::Errno::NXIO) => break,
                // No SEEK_DATA: treat everything left as data.
                Err(_) => {
                    ranges.push(pos..self.len);
                    break;
                }
            };
            let end = rustix::fs::seek(&self.file, SeekFrom::Hole(start))
                .unwrap_or(self.len)
                .min(self.len);
            if end <= start {
                break;
            }
            ranges.push(start..end);
            pos = end;
        }
        ranges
    }

    fn wipe_in_place(&mut self) {
        if self.len == 0 {
            return;
        }
        // Zero the pages that exist, not the holes released after loading (writing to a
        // hole would allocate it again).
        let data = self.data_ranges();
        if let Ok(mut map) = crate::sys::map_memfd(&self.file) {
            for range in data {
                map[range.start as usize..range.end as usize].fill(0);
            }
            let _ = map.flush();
        }
        if let Err(e) = rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            self.len,
        ) {
            tracing::warn!("could not punch the weights out of the memfd ({e}); they were zeroed and the memfd is closed");
        }
        let _ = self.file.set_len(0);
        self.len = 0;
    }
}

impl Drop for DecryptedWeights {
    fn drop(&mut self) {
        self.wipe_in_place();
    }
}

/// Lock the process against core dumps and same-uid ptrace, /proc/PID/mem and
/// /proc/PID/fd reads. Called first thing by every command that unwraps a content key,
/// before any key or plaintext exists in the process.
pub fn forbid_dumps() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(Into::into)
}

/// The soft RLIMIT_MEMLOCK in bytes (`None`: unlimited).
pub fn mlock_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Memlock).current
}

/// Is any swap device or file active (`/proc/swaps` lists more than its header)?
pub fn swap_active() -> bool {
    std::fs::read_to_string("/proc/swaps")
        .is_ok_and(|s| s.lines().skip(1).any(|l| !l.trim().is_empty()))
}

/// How the weights are kept out of swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPlan {
    /// No swap, and RLIMIT_MEMLOCK too low to lock them: they stay unlocked (nothing to
    /// swap them to).
    Unlocked,
    /// The weights' mapping is locked (llama.cpp `use_mlock`).
    Weights,
    /// Swap is active and the limit is unlimited: every page of the process, present
    /// and future, is locked (`mlockall`), so copies llama.cpp makes on the heap
    /// (repacked tensors) cannot be swapped out either.
    Everything,
}

/// Decide how to keep `len` bytes of weights out of swap, from the soft
/// RLIMIT_MEMLOCK (`None`: unlimited) and whether swap is active. `Err` is a refusal:
/// with swap on and the weights unlockable, pages of plaintext could be written to disk.
pub fn lock_plan(len: u64, limit: Option<u64>, swap_active: bool) -> Result<LockPlan, String> {
    let fits = limit.is_none_or(|l| l >= len);
    match (fits, swap_active) {
        (true, true) if limit.is_none() => Ok(LockPlan::Everything),
        (true, _) => Ok(LockPlan::Weights),
        (false, false) => Ok(LockPlan::Unlocked),
        (false, true) => Err(format!(
            "swap is active and the weights ({} MiB) cannot be locked in RAM (RLIMIT_MEMLOCK is {} KiB), so their plaintext could be swapped out to disk; refusing to decrypt. Raise the limit (`LimitMEMLOCK=infinity` in the systemd unit, `ulimit -l unlimited` in a shell, `--ulimit memlock=-1` for a container) or turn swap off (`swapoff -a`)",
            len >> 20,
            limit.unwrap_or(0) >> 10
        )),
    }
}

/// Lock every page of this process, present and future, in RAM.
pub fn lock_everything() -> std::io::Result<()> {
    use rustix::mm::MlockAllFlags;
    rustix::mm::mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn released_ranges_become_holes_and_the_wipe_zeroes_only_what_remains() {
        use std::io::{Read as _, Seek as _, Write as _};
        let mut file = create_memfd().unwrap();
        file.write_all(&vec![0xAA; 64 << 10]).unwrap();
        let weights = DecryptedWeights {
            file,
            len: 64 << 10,
            backing: PageBacking::Regular,
        };
        assert_eq!(weights.data_ranges(), vec![0..64 << 10]);
        assert_eq!(
            weights
                .release(std::slice::from_ref(&(8192..16_384)))
                .unwrap(),
            8192
        );
        assert_eq!(weights.data_ranges(), vec![0..8192, 16_384..64 << 10]);
        let mut bytes = Vec::new();
        let mut file = weights.file.try_clone().unwrap();
        file.rewind().unwrap();
        file.read_to_end(&mut bytes).unwrap();
        assert!(bytes[8192..16_384].iter().all(|&b| b == 0));
        assert!(bytes[..8192]
            .iter()
            .chain(&bytes[16_384..])
            .all(|&b| b == 0xAA));
        drop(weights);
        // The wipe zeroed and truncated the memfd the clone still refers to.
        assert_eq!(file.metadata().unwrap().len(), 0);
    }

    #[test]
    fn swap_with_unlockable_weights_is_a_refusal() {
        let e = lock_plan(GIB, Some(64 << 10), true).unwrap_err();
        assert!(
            e.contains("LimitMEMLOCK=infinity") && e.contains("swapoff"),
            "{e}"
        );
        assert_eq!(
            lock_plan(GIB, Some(64 << 10), false),
            Ok(LockPlan::Unlocked)
        );
        assert_eq!(lock_plan(GIB, Some(2 * GIB), true), Ok(LockPlan::Weights));
        assert_eq!(lock_plan(GIB, Some(2 * GIB), false), Ok(LockPlan::Weights));
        assert_eq!(lock_plan(GIB, None, true), Ok(LockPlan::Everything));
        assert_eq!(lock_plan(GIB, None, false), Ok(LockPlan::Weights));
    }
}
