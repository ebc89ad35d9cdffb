//! Prompt prefixes kept across requests, as llama-server's `cache_prompt`: when a
//! sequence finishes, its tokens stay in llama.cpp's KV cache, and the next request whose
//! prompt begins the same way (a chat's next turn resends the whole conversation; a
//! client's requests share a system prompt) runs in that sequence and decodes only what
//! differs. The cache holds what the sequence's KV cells hold; the engine trims the
//! cells past the shared prefix before reusing it.
//!
//! Only for models whose memory can drop a sequence's tail (not recurrent ones). With
//! sliding-window layers (Gemma 3) a prefix is reused only while those layers still
//! hold every cell the next token attends to: the cells older than the window are gone
//! once a sequence has grown past its window cache (llama-server's rule).

/// What each sequence's KV cells hold, and when it last ran.
pub struct PrefixCache {
    seqs: Vec<Cached>,
    clock: u64,
    enabled: bool,
    /// The sliding-window layers' window in tokens; 0: no such layers.
    window: u32,
}

#[derive(Default)]
struct Cached {
    tokens: Vec<i32>,
    used: u64,
}

impl PrefixCache {
    pub fn new(sequences: usize, enabled: bool, window: u32) -> PrefixCache {
        PrefixCache {
            seqs: (0..sequences).map(|_| Cached::default()).collect(),
            clock: 0,
            enabled,
            window,
        }
    }

    /// Can a sequence whose oldest KV cell (in its sliding-window layers) holds position
    /// `oldest` go on after its first `shared` tokens? The token at position `shared`
    /// attends to the `window` positions before it, which must all still be held.
    pub fn prefix_survives(&self, shared: usize, oldest: i32) -> bool {
        self.window == 0 || i64::from(oldest) <= (shared as i64 - i64::from(self.window)).max(0)
    }

    /// Of the `free` sequences, the one to run `prompt` in, and how many of its leading
    /// tokens that sequence already holds: the longest shared prefix (at most all but
    /// the last prompt token, which is always decoded for its logits); with nothing
    /// shared, the sequence used longest ago, so recent prefixes survive.
    pub fn choose(&mut self, free: &[usize], prompt: &[i32]) -> (usize, usize) {
        let limit = prompt.len().saturating_sub(1);
        let shared = |seq: usize| {
            if !self.enabled {
                return 0;
            }
            self.seqs[seq]
                .tokens
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
                .min(limit)
        };
        let (best, common) = free
            .iter()
            .map(|seq| (*seq, shared(*seq)))
            .max_by_key(|(seq, common)| (*common, std::cmp::Reverse(self.seqs[*seq].used)))
            .expect("a free sequence");
        self.clock += 1;
        self.seqs[best].used = self.clock;
        (best, common)
    }

    /// How many tokens `seq`'s cells hold.
    pub fn held(&self, seq: usize) -> usize {
        self.seqs[seq].tokens.len()
    }

    /// `seq`'s cells now hold only its first `len` tokens.
    pub fn truncate(&mut self, seq: usize, len: usize) {
        self.seqs[seq].tokens.truncate(len);
    }

    /// A sequence ended with `tokens` in its cells. `false`: the cache is off for this
    /// model, and the caller must clear the cells.
    pub fn keep(&mut self, seq: usize, tokens: Vec<i32>) -> bool {
        if !self.enabled {
            self.seqs[seq].tokens.clear();
            return false;
        }
        self.seqs[seq].tokens = tokens;
        true
    }

    /// `seq`'s cells were cleared.
    pub fn forget(&mut self, seq: usize) {
        self.seqs[seq].tokens.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_shared_prefix_wins_and_the_last_prompt_token_is_always_decoded() {
        let mut cache = PrefixCache::new(3, true, 0);
        assert!(cache.keep(0, vec![1, 2, 3, 4, 5]));
        cache.keep(1, vec![1, 2, 9]);
        assert_eq!(cache.choose(&[0, 1, 2], &[1, 2, 3, 4, 7, 8]), (0, 4));
        assert_eq!(cache.choose(&[1, 2], &[1, 2, 9, 10]), (1, 3));
        // The whole prompt cached: its last token is decoded again for the logits.
        assert_eq!(cache.choose(&[0], &[1, 2, 3]), (0, 2));
        // Nothing shared: the sequence used longest ago (2 never ran).
        assert_eq!(cache.choose(&[0, 1, 2], &[42]).0, 2);
        cache.truncate(0, 2);
        assert_eq!(cache.held(0), 2);
        cache.forget(0);
        assert_eq!(cache.held(0), 0);
    }

    #[test]
    fn a_sliding_window_prefix_survives_only_while_its_window_is_held() {
        let cache = PrefixCache::new(1, true, 16);
        // Nothing overwritten yet: any prefix.
        assert!(cache.prefix_survives(10, 0));
        assert!(cache.prefix_survives(100, 0));
        // The windowed layers hold positions from 24 on: going on at 40 (or later)
        // needs 24.., at 30 needs 14.., which are gone.
        assert!(cache.prefix_survives(40, 24));
        assert!(!cache.prefix_survives(39, 24));
        assert!(!cache.prefix_survives(30, 24));
        assert!(!cache.prefix_survives(10, 24));
        // No sliding window: always.
        assert!(PrefixCache::new(1, true, 0).prefix_survives(3, 500));
    }

    #[test]
    fn disabled_it_shares_nothing() {
        let mut cache = PrefixCache::new(2, false, 0);
        assert!(!cache.keep(0, vec![1, 2, 3]));
        assert_eq!(cache.held(0), 0);
        assert_eq!(cache.choose(&[0, 1], &[1, 2, 3, 4]).1, 0);
    }
}
