//! Bar charts as SVG, drawn on the server: no JavaScript, no external library. Labels
//! are escaped; colours are presentation attributes (the portal's content security
//! policy allows no inline style).

use std::fmt::Write as _;

/// Escape text for SVG/XML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A bar per `(label, value)`, with a dashed line at `cap` when there is one; `title`
/// names the chart for screen readers.
pub fn bars(title: &str, values: &[(String, u64)], cap: Option<u64>) -> String {
    const W: u64 = 640;
    const H: u64 = 180;
    const LEFT: u64 = 56;
    const BOTTOM: u64 = 28;
    let top = values
        .iter()
        .map(|(_, v)| *v)
        .chain(cap)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_h = H - BOTTOM - 8;
    let y = |v: u64| H - BOTTOM - (u128::from(v) * u128::from(plot_h) / u128::from(top)) as u64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{}"><title>{}</title>"#,
        escape(title),
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{}" x2="{W}" y2="{}" stroke="#9aa5b1"/><text x="{}" y="{}" font-size="11" text-anchor="end" fill="#5b6670">{top}</text><text x="{}" y="{}" font-size="11" text-anchor="end" fill="#5b6670">0</text>"##,
        H - BOTTOM,
        H - BOTTOM,
        LEFT - 6,
        y(top) + 4,
        LEFT - 6,
        H - BOTTOM + 4
    );
    let n = values.len().max(1) as u64;
    let slot = (W - LEFT) / n;
    let bar = (slot * 3 / 4).clamp(1, 48);
    for (i, (label, value)) in values.iter().enumerate() {
        let x = LEFT + i as u64 * slot + (slot - bar) / 2;
        let top_y = y(*value);
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="{top_y}" width="{bar}" height="{}" fill="#2457a6"><title>{}: {value}</title></rect>"##,
            H - BOTTOM - top_y,
            escape(label)
        );
        // Label every bar when they fit, else every few.
        let every = (n / 8).max(1) as usize;
        if i % every == 0 {
            let _ = write!(
                svg,
                r##"<text x="{}" y="{}" font-size="10" text-anchor="middle" fill="#5b6670">{}</text>"##,
                x + bar / 2,
                H - BOTTOM + 14,
                escape(label)
            );
        }
    }
    if let Some(cap) = cap {
        let cy = y(cap);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{cy}" x2="{W}" y2="{cy}" stroke="#a3361b" stroke-dasharray="6 4"/><text x="{W}" y="{}" font-size="11" text-anchor="end" fill="#a3361b">cap {cap}</text>"##,
            // Above the line, or below it when the line runs along the top.
            if cy >= 16 { cy - 4 } else { cy + 13 }
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value_or_the_cap_and_escape_labels() {
        let svg = bars(
            "requests <per> day",
            &[("a<b".into(), 50), ("c".into(), 100)],
            Some(200),
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("requests &lt;per&gt; day"));
        assert!(svg.contains("a&lt;b: 50"));
        assert!(!svg.contains("a<b"));
        assert!(svg.contains("cap 200"));
        // The cap is the top of the scale: a bar of 100 is half the plot high.
        assert!(svg.contains(r#"height="72""#), "{svg}");
        // No data: still a chart, no division by zero.
        assert!(bars("empty", &[], None).contains("</svg>"));
    }
}
