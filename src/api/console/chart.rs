//! Server-rendered SVG bar charts: no script, no library. Each chart is an `<svg role="img">`
//! with a title and a one-line description for screen readers, and the same numbers as a
//! table in a `<details>` element beneath it.

use std::fmt::Write as _;

use super::esc;

/// One series of bars, oldest first: (label, value).
pub struct Series<'a> {
    pub id: &'a str,
    pub title: &'a str,
    /// What one bar counts, for the description ("access events a day").
    pub unit: &'a str,
    pub bars: Vec<(String, u64)>,
    /// CSS class of the bars (`bar`, `bar-refused`).
    pub class: &'a str,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 180;
const LEFT: u32 = 48;
const BOTTOM: u32 = 28;

/// A rounded-up axis maximum: 1, 2 or 5 times a power of ten.
fn nice_max(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= max {
                return step.saturating_mul(m).max(1);
            }
        }
        step = step.saturating_mul(10);
    }
}

/// The chart as HTML: the SVG and its table.
pub fn bars(s: &Series<'_>) -> String {
    let total: u64 = s.bars.iter().map(|(_, v)| v).sum();
    let max = s.bars.iter().map(|(_, v)| *v).max().unwrap_or(0);
    let peak = s
        .bars
        .iter()
        .max_by_key(|(_, v)| *v)
        .map(|(l, v)| format!("; the most, {v}, on {l}"))
        .filter(|_| max > 0)
        .unwrap_or_default();
    let (first, last) = (
        s.bars.first().map(|b| b.0.as_str()).unwrap_or(""),
        s.bars.last().map(|b| b.0.as_str()).unwrap_or(""),
    );
    let desc = format!(
        "{total} {unit} in all from {first} to {last}{peak}.",
        unit = s.unit
    );
    let top = nice_max(max);
    let plot_w = WIDTH - LEFT - 8;
    let plot_h = HEIGHT - BOTTOM - 8;
    let n = s.bars.len().max(1) as u32;
    let slot = plot_w as f64 / n as f64;
    let mut svg = format!(
        "<svg id=\"{id}\" class=\"chart\" role=\"img\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         aria-labelledby=\"{id}-t {id}-d\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"{id}-t\">{title}</title><desc id=\"{id}-d\">{desc}</desc>",
        id = esc(s.id),
        title = esc(s.title),
        desc = esc(&desc),
    );
    // Axis: zero, the top and, when it is a whole number, half way, with grid lines.
    let mut ticks = vec![(0, 0.0), (top, 1.0)];
    if top % 2 == 0 {
        ticks.push((top / 2, 0.5));
    }
    for (value, frac) in ticks {
        let y = 8.0 + plot_h as f64 * (1.0 - frac);
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{value}</text>",
            WIDTH - 8,
            LEFT - 6,
            y + 4.0
        );
    }
    for (i, (label, v)) in s.bars.iter().enumerate() {
        let h = plot_h as f64 * (*v as f64 / top as f64);
        let x = LEFT as f64 + slot * i as f64 + slot * 0.1;
        let _ = write!(
            svg,
            "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\">\
             <title>{}: {v}</title></rect>",
            8.0 + plot_h as f64 - h,
            (slot * 0.8).max(1.0),
            esc(label),
            class = esc(s.class),
        );
    }
    // The first and last labels under the axis.
    let _ = write!(
        svg,
        "<text class=\"axis\" x=\"{LEFT}\" y=\"{}\">{}</text>\
         <text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        HEIGHT - 8,
        esc(first),
        WIDTH - 8,
        HEIGHT - 8,
        esc(last)
    );
    let mut rows = String::new();
    for (label, v) in s.bars.iter().filter(|(_, v)| *v > 0) {
        let _ = write!(rows, "<tr><td>{}</td><td>{v}</td></tr>", esc(label));
    }
    format!(
        "<figure class=\"chart\">{svg}<figcaption>{title}: {desc}</figcaption>\
         <details><summary>The numbers</summary><table><thead><tr><th scope=\"col\">When</th>\
         <th scope=\"col\">Count</th></tr></thead><tbody>{rows}</tbody></table></details></figure>",
        title = esc(s.title),
        desc = esc(&desc),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up_and_the_description_names_the_numbers() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(1), 1);
        assert_eq!(nice_max(3), 5);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(501), 1000);
        let html = bars(&Series {
            id: "c",
            title: "Access <events>",
            unit: "access events",
            bars: vec![
                ("2026-12-01".into(), 3),
                ("2026-12-02".into(), 0),
                ("2026-12-03".into(), 7),
            ],
            class: "bar",
        });
        assert!(html.contains(
            "10 access events in all from 2026-12-01 to 2026-12-03; the most, 7, on 2026-12-03."
        ));
        assert!(html.contains("Access &lt;events&gt;"));
        assert_eq!(html.matches("<rect").count(), 3);
        // Empty bars are drawn (a gap is information) but left out of the table.
        assert_eq!(html.matches("<tr><td>").count(), 2);
    }
}
