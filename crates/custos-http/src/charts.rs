//! Charts as SVG, drawn on the server for the operator dashboard : no script and no
//! external asset, with axes, labels and the numbers themselves, and a text alternative for
//! screen readers.
//!
//! Pure functions from figures to markup; the pages module decides which figures to show.

use std::fmt::Write;

/// One series of a bar chart: a name for the legend, a fill colour, one value per category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    /// A CSS colour. The palette of the pages keeps a contrast of at least 3:1 against white.
    pub color: &'static str,
    pub values: Vec<u64>,
}

const WIDTH: u64 = 640;
const HEIGHT: u64 = 280;
const LEFT: u64 = 56;
const RIGHT: u64 = 16;
const TOP: u64 = 36;
const BOTTOM: u64 = 56;

/// Escapes text for SVG (XML) content and attribute values.
pub fn escape(text: &str) -> String {
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

/// A round upper bound for the y axis, at or above `max`: 1, 2 or 5 times a power of ten.
fn nice_ceiling(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for factor in [1, 2, 5] {
            let bound = step.saturating_mul(factor);
            if bound >= max {
                return bound.max(1);
            }
        }
        step = step.saturating_mul(10);
    }
}

/// Stacked bars, one per category, with a y axis of four ticks, each category's label under its
/// bar, each bar's total above it, and a legend. An empty chart says so instead of drawing
/// nothing.
pub fn stacked_bars(title: &str, categories: &[String], series: &[Series]) -> String {
    let totals: Vec<u64> = (0..categories.len())
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let mut svg = String::new();
    let description = describe(categories, series, &totals);
    // Several charts share a page: each names its title and description by its own ids.
    let id: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-{id}-title chart-{id}-desc" class="chart"><title id="chart-{id}-title">{}</title><desc id="chart-{id}-desc">{}</desc>"#,
        escape(title),
        escape(&description),
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="20" class="chart-title">{}</text>"#,
        escape(title)
    );
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let max = totals.iter().copied().max().unwrap_or(0);
    if categories.is_empty() || max == 0 {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">No data yet</text></svg>"#,
            LEFT + plot_width / 2,
            TOP + plot_height / 2
        );
        return svg;
    }
    let ceiling = nice_ceiling(max);
    let y = |value: u64| TOP + plot_height - value.saturating_mul(plot_height) / ceiling;
    // The y axis: four ticks with their values, and light grid lines.
    for tick in 0..=4u64 {
        let value = ceiling * tick / 4;
        let at = y(value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{at}" y2="{at}" stroke="#d0d7de"/><text x="{}" y="{}" text-anchor="end" class="tick">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6,
            at + 4,
            thousands(value)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#57606a"/>"##,
        TOP + plot_height
    );
    let count = u64::try_from(categories.len()).unwrap_or(1).max(1);
    let slot = plot_width / count;
    let bar = (slot * 3 / 5).max(2);
    for (index, (category, total)) in categories.iter().zip(&totals).enumerate() {
        let x = LEFT + slot * u64::try_from(index).unwrap_or(0) + (slot - bar) / 2;
        let mut stacked = 0u64;
        for part in series {
            let value = part.values.get(index).copied().unwrap_or(0);
            if value == 0 {
                continue;
            }
            let (top, bottom) = (y(stacked + value), y(stacked));
            let _ = write!(
                svg,
                r#"<rect x="{x}" y="{top}" width="{bar}" height="{}" fill="{}"><title>{}: {} {}</title></rect>"#,
                bottom.saturating_sub(top).max(1),
                part.color,
                escape(category),
                thousands(value),
                escape(&part.name)
            );
            stacked += value;
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" class="value">{}</text><text x="{}" y="{}" text-anchor="middle" class="label">{}</text>"#,
            x + bar / 2,
            y(*total).saturating_sub(4),
            thousands(*total),
            x + bar / 2,
            TOP + plot_height + 16,
            escape(category)
        );
    }
    // The legend, under the labels.
    let mut x = LEFT;
    for part in series {
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}" class="legend">{}</text>"#,
            HEIGHT - 18,
            part.color,
            x + 14,
            HEIGHT - 9,
            escape(&part.name)
        );
        x += 14 + 8 * u64::try_from(part.name.chars().count()).unwrap_or(0) + 16;
    }
    svg.push_str("</svg>");
    svg
}

/// The chart in words, for `<desc>`: every category with each series' value and the total.
fn describe(categories: &[String], series: &[Series], totals: &[u64]) -> String {
    categories
        .iter()
        .enumerate()
        .map(|(i, category)| {
            let parts: Vec<String> = series
                .iter()
                .map(|s| {
                    format!(
                        "{} {}",
                        thousands(s.values.get(i).copied().unwrap_or(0)),
                        s.name
                    )
                })
                .collect();
            format!(
                "{category}: {} (total {})",
                parts.join(", "),
                thousands(totals.get(i).copied().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `1234567` as `1,234,567`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::indexing_slicing,
        reason = "a test fails loudly on a broken fixture"
    )]

    use super::*;

    fn series() -> Vec<Series> {
        vec![
            Series {
                name: "allowed".into(),
                color: "#1a7f37",
                values: vec![1200, 40],
            },
            Series {
                name: "declined".into(),
                color: "#cf222e",
                values: vec![300, 0],
            },
        ]
    }

    #[test]
    fn a_chart_shows_its_title_axes_labels_numbers_and_legend() {
        let svg = stacked_bars(
            "Choices by plan",
            &["free".into(), "pro <beta>".into()],
            &series(),
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"role="img""#));
        assert!(svg.contains("<title id=\"chart-choices-by-plan-title\">Choices by plan</title>"));
        // Totals above the bars, with thousands separated, and each category's label.
        assert!(svg.contains(">1,500</text>") && svg.contains(">40</text>"));
        assert!(svg.contains(">free</text>"));
        assert!(
            svg.contains(">pro &lt;beta&gt;</text>"),
            "labels are escaped"
        );
        // The y axis runs from 0 to a round ceiling above the largest total (1,500 → 2,000).
        assert!(svg.contains(">0</text>") && svg.contains(">2,000</text>"));
        // The legend names each series; the description reads every figure out.
        assert!(svg.contains(">allowed</text>") && svg.contains(">declined</text>"));
        assert!(svg.contains("free: 1,200 allowed, 300 declined (total 1,500)"));
        // A zero part draws no bar: two bars for free, one for pro.
        assert_eq!(svg.matches("<rect x=").count() - 2, 3);
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = stacked_bars("Purges due", &[], &[]);
        assert!(svg.contains("No data yet"));
        let zero = stacked_bars(
            "Purges due",
            &["week 1".into()],
            &[Series {
                name: "due".into(),
                color: "#0969da",
                values: vec![0],
            }],
        );
        assert!(zero.contains("No data yet"));
    }

    #[test]
    fn ceilings_are_round_and_numbers_readable() {
        assert_eq!(
            [1, 2, 3, 7, 10, 11, 99, 1_500, 250_001].map(nice_ceiling),
            [1, 2, 5, 10, 10, 20, 100, 2_000, 500_000]
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
