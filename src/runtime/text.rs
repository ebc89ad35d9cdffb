//! Turning token pieces into text that is safe to send: whole UTF-8 characters only,
//! and stop sequences caught even when they straddle tokens.

/// Collects token bytes and releases the longest valid UTF-8 prefix.
#[derive(Debug, Default)]
pub struct Utf8Collector {
    pending: Vec<u8>,
}

impl Utf8Collector {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // An invalid sequence (not merely incomplete): replace it rather than stall.
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return text;
            }
        };
        let text =
            String::from_utf8(self.pending.drain(..valid).collect()).expect("checked valid UTF-8");
        text
    }

    /// Whatever is left at the end (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Holds back text that might be the start of a stop sequence.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to send after pushing text.
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutcome {
    pub emit: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopOutcome {
                emit,
                stopped: true,
            };
        }
        // Keep the longest suffix of `held` that is a proper prefix of some stop.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(move |n| s.is_char_boundary(*n))
                    .map(move |n| &s[..n])
            })
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// Release whatever is held at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens_is_released_whole() {
        let mut c = Utf8Collector::default();
        let euro = "€".as_bytes();
        assert_eq!(c.push(&euro[..1]), "");
        assert_eq!(c.push(&euro[1..]), "€");
        assert_eq!(c.push(b"ab"), "ab");
        assert_eq!(c.push(&[0xe2]), "");
        assert_eq!(c.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_sequence_split_across_pieces_is_caught_and_not_emitted() {
        let mut m = StopMatcher::new(vec!["</end>".into()]);
        let mut out = String::new();
        let mut stopped = false;
        for piece in ["Hello </", "en", "d> trailing"] {
            let r = m.push(piece);
            out.push_str(&r.emit);
            if r.stopped {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(out, "Hello ");
    }

    #[test]
    fn held_prefix_is_released_when_it_turns_out_not_to_stop() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ab ST").emit, "ab ");
        assert_eq!(m.push("ART").emit, "START");
        assert_eq!(m.finish(), "");
    }
}
