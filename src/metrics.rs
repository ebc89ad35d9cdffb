//! Prometheus text exposition (format 0.0.4), written by hand: the node and the license
//! server each render their `/metrics` with [`Exposition`]. Every name starts with
//! `leasehold_`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The content type of a text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// A metrics page being written.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a metric family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(name.starts_with("leasehold_"));
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The rate of a growing counter over the last `window`, from samples taken when asked
/// (at most one per second is kept).
pub struct Rate {
    window: Duration,
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Rate {
    pub fn new(window: Duration) -> Rate {
        Rate {
            window,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Record the counter's value now.
    pub fn observe(&self, value: u64) {
        let now = Instant::now();
        let mut s = self.samples.lock().unwrap();
        if s.back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            s.push_back((now, value));
        }
        while s.len() > 2
            && s.get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            s.pop_front();
        }
    }

    /// Per second over the samples kept (0 until two samples a second apart exist).
    pub fn per_second(&self, now_value: u64) -> f64 {
        let s = self.samples.lock().unwrap();
        match s.front() {
            Some((t, v)) if t.elapsed() >= Duration::from_millis(500) => {
                now_value.saturating_sub(*v) as f64 / t.elapsed().as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let mut e = Exposition::new();
        e.single("leasehold_a", Kind::Gauge, "A value.", 1.5);
        e.family("leasehold_b_total", Kind::Counter, "Counts.")
            .sample("leasehold_b_total", &[("outcome", "refused:\"x\"\n")], 3.0);
        assert_eq!(
            e.finish(),
            "# HELP leasehold_a A value.\n# TYPE leasehold_a gauge\nleasehold_a 1.5\n\
             # HELP leasehold_b_total Counts.\n# TYPE leasehold_b_total counter\n\
             leasehold_b_total{outcome=\"refused:\\\"x\\\"\\n\"} 3\n"
        );
    }
}
