//! The license-mandated output filter, streaming-safe. The engine passes every
//! generation's text through it before any of it leaves (see `engine`).
//!
//! Rules are literal terms and regular expressions. Text is pushed as it is generated;
//! everything that can no longer be part of a match is released, and the last
//! `max_span − 1` characters are held back, so a match split across tokens or SSE
//! chunks is still caught before any of it leaves. A rule must have a bounded length
//! (regular expressions with `*`, `+` or `{n,}` are refused: bound them with `{m,n}`),
//! which is what bounds the hold-back.

use regex::Regex;

pub use crate::license::FilterRules;

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct OutputFilter {
    /// One alternation of every rule, each in its own group, in rule order.
    regex: Regex,
    names: std::sync::Arc<[String]>,
    /// The capture group that wraps each rule, in rule order. Not simply rule + 1: a
    /// pattern's own capture groups are numbered among them.
    groups: std::sync::Arc<[usize]>,
    /// The longest text any rule can match, in characters.
    max_span: usize,
}

/// What pushing text gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Text safe to send now (possibly empty while text is held back).
    Pass(String),
    /// A rule matched: `before` (the text ahead of the match) may still be sent; the
    /// match and everything after it never are. Generation ends.
    Blocked { before: String, rule: String },
}

impl OutputFilter {
    pub fn new(rules: &FilterRules) -> Result<OutputFilter, String> {
        let mut parts = Vec::new();
        let mut names = Vec::new();
        let mut max_bytes = 0usize;
        let mut groups = Vec::new();
        let mut next_group = 1;
        for term in &rules.terms {
            if term.is_empty() {
                return Err("an empty filter term would match everything".into());
            }
            parts.push(format!("(?i:{})", regex::escape(term)));
            names.push(format!("term '{term}'"));
        }
        for pattern in &rules.patterns {
            parts.push(format!("(?:{pattern})"));
            names.push(format!("pattern /{pattern}/"));
        }
        for (part, name) in parts.iter().zip(&names) {
            let hir = regex_syntax::parse(part).map_err(|e| format!("{name}: {e}"))?;
            let props = hir.properties();
            let max = props
                .maximum_len()
                .ok_or_else(|| format!("{name} can match text of unbounded length; bound it with {{m,n}} instead of *, + or {{n,}}"))?;
            if props.minimum_len() == Some(0) {
                return Err(format!("{name} can match empty text"));
            }
            max_bytes = max_bytes.max(max);
            groups.push(next_group);
            next_group += 1 + props.explicit_captures_len();
        }
        if parts.is_empty() {
            return Err("a filter needs at least one term or pattern".into());
        }
        let alternation: Vec<String> = parts.iter().map(|p| format!("({p})")).collect();
        let regex = Regex::new(&alternation.join("|")).map_err(|e| e.to_string())?;
        Ok(OutputFilter {
            regex,
            names: names.into(),
            groups: groups.into(),
            // A rule's byte length bounds its length in characters.
            max_span: max_bytes,
        })
    }

    /// A filter state for one generation (the compiled rules are shared, not copied).
    pub fn stream(&self) -> FilterStream {
        FilterStream {
            filter: self.clone(),
            held: String::new(),
            blocked: false,
        }
    }
}

/// One generation's pass through the filter.
pub struct FilterStream {
    filter: OutputFilter,
    held: String,
    blocked: bool,
}

impl FilterStream {
    /// Take generated text; say what may be sent.
    pub fn push(&mut self, text: &str) -> Filtered {
        if self.blocked {
            return Filtered::Pass(String::new());
        }
        self.held.push_str(text);
        if let Some(caps) = self.filter.regex.captures(&self.held) {
            let whole = caps.get(0).expect("group 0 always matches");
            let rule = (self.filter.groups.iter())
                .position(|&g| caps.get(g).is_some())
                .map(|rule| self.filter.names[rule].clone())
                .unwrap_or_default();
            let before = self.held[..whole.start()].to_string();
            self.held.clear();
            self.blocked = true;
            return Filtered::Blocked { before, rule };
        }
        // Keep the last max_span − 1 characters: a match may start there.
        let keep = self.filter.max_span.saturating_sub(1);
        let chars = self.held.chars().count();
        if chars <= keep {
            return Filtered::Pass(String::new());
        }
        let cut = self
            .held
            .char_indices()
            .nth(chars - keep)
            .map_or(self.held.len(), |(i, _)| i);
        let released = self.held[..cut].to_string();
        self.held.drain(..cut);
        Filtered::Pass(released)
    }

    /// The generation ended: release what is held (it matched nothing).
    pub fn finish(&mut self) -> String {
        if self.blocked {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> OutputFilter {
        OutputFilter::new(&FilterRules {
            terms: vec!["Project Albatross".into()],
            patterns: vec![r"\b\d{3}-\d{2}-\d{4}\b".into()],
        })
        .unwrap()
    }

    /// Push `chunks`; what a client would receive and whether it was blocked.
    fn run(filter: &OutputFilter, chunks: &[&str]) -> (String, Option<String>) {
        let mut stream = filter.stream();
        let mut out = String::new();
        for chunk in chunks {
            match stream.push(chunk) {
                Filtered::Pass(text) => out.push_str(&text),
                Filtered::Blocked { before, rule } => {
                    out.push_str(&before);
                    return (out, Some(rule));
                }
            }
        }
        out.push_str(&stream.finish());
        (out, None)
    }

    #[test]
    fn clean_text_passes_whole_and_in_order() {
        let text = "The quick brown fox jumps over the lazy dog, twice.";
        let chunks: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        assert_eq!(run(&filter(), &chunks), (text.to_string(), None));
    }

    #[test]
    fn a_term_split_across_chunks_never_leaves() {
        let (sent, rule) = run(
            &filter(),
            &["The code name is Pro", "ject Alb", "atross", " and more"],
        );
        assert_eq!(sent, "The code name is ");
        assert_eq!(rule.as_deref(), Some("term 'Project Albatross'"));
        // Case does not matter for terms.
        let (sent, rule) = run(&filter(), &["see PROJECT albatross now"]);
        assert_eq!((sent.as_str(), rule.is_some()), ("see ", true));
        // Never any part of the match, even one character at a time.
        let text = "id 123-45-6789 end";
        let chunks: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (sent, rule) = run(&filter(), &chunks);
        assert_eq!(sent, "id ");
        assert!(rule.unwrap().starts_with("pattern"));
    }

    #[test]
    fn held_back_text_is_bounded_by_the_longest_rule() {
        let f = filter();
        let mut stream = f.stream();
        let long = "a".repeat(100);
        let Filtered::Pass(sent) = stream.push(&long) else {
            panic!("blocked")
        };
        // The hold-back is the longest rule's length in bytes (a safe bound on its
        // length in characters: Unicode digits and case folds can be multi-byte).
        let held = stream.finish();
        assert_eq!(sent.len() + held.len(), 100);
        assert_eq!(held.len(), f.max_span - 1);
        assert!(f.max_span < 64, "{}", f.max_span);
    }

    #[test]
    fn patterns_with_their_own_groups_name_the_rule_that_matched() {
        // Found by fuzzing: a pattern's capture groups shifted the group numbers of
        // the rules after it (a wrong rule named, or an index out of bounds).
        let f = OutputFilter::new(&FilterRules {
            terms: vec!["memo".into()],
            patterns: vec!["(a)(b)?c".into(), "(?P<n>x{1,3})y".into(), "123".into()],
        })
        .unwrap();
        for (text, rule) in [
            ("see 123 now", "pattern /123/"),
            ("an xxy here", "pattern /(?P<n>x{1,3})y/"),
            ("abc", "pattern /(a)(b)?c/"),
            ("a MEMO", "term 'memo'"),
        ] {
            assert_eq!(run(&f, &[text]).1.as_deref(), Some(rule), "{text}");
        }
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        let f = OutputFilter::new(&FilterRules {
            terms: vec!["秘密計画".into()],
            patterns: vec![],
        })
        .unwrap();
        let (sent, rule) = run(&f, &["これは", "秘密", "計画です"]);
        assert_eq!((sent.as_str(), rule.is_some()), ("これは", true));
        let (sent, rule) = run(&f, &["日本語の文章", "です。"]);
        assert_eq!((sent.as_str(), rule), ("日本語の文章です。", None));
    }

    #[test]
    fn rules_files_are_read_strictly() {
        let rules = FilterRules::parse_toml("terms = [\"a b\"]\npatterns = ['\\d{2}']\n").unwrap();
        assert_eq!(
            (rules.terms, rules.patterns),
            (vec!["a b".to_string()], vec![r"\d{2}".to_string()])
        );
        for bad in [
            "terms = \"not a list\"",
            "terms = [1]",
            "words = [\"x\"]",
            "terms = []",
            "terms = [\"unclosed",
        ] {
            assert!(FilterRules::parse_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unbounded_or_empty_rules_are_refused() {
        for (terms, patterns) in [
            (vec![], vec![r"secret.*"]),
            (vec![], vec![r"\d+"]),
            (vec![], vec![r"a?"]),
            (vec![""], vec![]),
            (vec![], vec![r"(unclosed"]),
            (vec![], vec![]),
        ] {
            let rules = FilterRules {
                terms: terms.into_iter().map(String::from).collect(),
                patterns: patterns.into_iter().map(String::from).collect(),
            };
            assert!(OutputFilter::new(&rules).is_err(), "{rules:?}");
        }
    }
}
