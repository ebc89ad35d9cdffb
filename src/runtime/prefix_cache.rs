//! Prompt prefixes kept across requests, as llama-server's `cache_prompt`: when a
//! sequence finishes, its tokens stay in llama.cpp's KV cache, and the next request whose
//! prompt begins the same way (a chat's next turn resends the whole conversation; a
//! client's requests share a system prompt) runs in that sequence and decodes only what
//! differs. The cache holds what the sequence's KV cells hold; the engine trims the
//! cells past the shared prefix before reusing it.
//!
//! Only for models whose KV cache can drop a sequence's tail: not sliding-window models
//! (Gemma 3 keeps only a window, so an older prefix is gone) nor recurrent ones.

/// What each sequence's KV cells hold, and when it last ran.
pub struct PrefixCache {
    seqs: Vec<Cached>,
    clock: u64,
    enabled: bool,
}

#[derive(Default)]
struct Cached {
    tokens: Vec<i32>,
    used: u64,
}

impl PrefixCache {
    pub fn new(sequences: usize, enabled: bool) -> PrefixCache {
        PrefixCache {
            seqs: (0..sequences).map(|_| Cached::default()).collect(),
            clock: 0,
            enabled,
        }
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
        let mut cache = PrefixCache::new(3, true);
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
    fn disabled_it_shares_nothing() {
        let mut cache = PrefixCache::new(2, false);
        assert!(!cache.keep(0, vec![1, 2, 3]));
        assert_eq!(cache.held(0), 0);
        assert_eq!(cache.choose(&[0, 1], &[1, 2, 3, 4]).1, 0);
    }
}
