//! The one source of randomness: the operating system's CSPRNG.

/// Fill `buf` with random bytes from the OS. Failure to get OS randomness is not
/// recoverable for a key-generating program, so it aborts loudly rather than limp on.
pub fn fill(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill(&mut out);
    out
}
