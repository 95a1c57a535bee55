//! Pictures drawn on the server as SVG: a workflow's DAG, the finished-per-minute chart and
//! the bars of the lineage timeline. Only presentation attributes are used (no `style`), so
//! they need nothing from the CSP; every label is escaped text.

use std::collections::HashMap;

use maud::{Markup, html};

/// A step of a DAG picture.
#[derive(Debug, Clone)]
pub struct DagStep {
    /// Its name.
    pub name: String,
    /// Its handler.
    pub handler: String,
    /// The steps it waits for.
    pub depends_on: Vec<String>,
    /// Its state in an execution (`None` on a definition).
    pub state: Option<String>,
}

/// The fill of a state (fixed colours, never a value from the data).
fn fill(state: Option<&str>) -> &'static str {
    match state {
        None => "#eef2fb",
        Some("completed") => "#cdebd8",
        Some("failed") => "#f6c9c3",
        Some("cancelled") => "#dcdde1",
        Some("enqueued") => "#cfe0f7",
        Some("waiting") => "#e3d7f5",
        Some("pending") => "#fbe7c2",
        Some(_) => "#ffffff",
    }
}

fn stroke(state: Option<&str>) -> &'static str {
    match state {
        Some("completed") => "#1f8a4c",
        Some("failed") => "#c23a2b",
        Some("cancelled") => "#7a7f8a",
        Some("enqueued") => "#2b6cb0",
        Some("waiting") => "#6b46c1",
        Some("pending") => "#b7791f",
        _ => "#5a6b8c",
    }
}

const BOX_W: i32 = 170;
const BOX_H: i32 = 40;
const GAP_X: i32 = 50;
const GAP_Y: i32 = 16;

/// The DAG, left to right: a step's column is the length of the longest chain of steps it
/// waits for.
pub fn dag(steps: &[DagStep]) -> Markup {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut layer = vec![0usize; steps.len()];
    // Longest path by relaxation; a definition is acyclic, and the bound stops a bad one.
    for _ in 0..steps.len() {
        let mut changed = false;
        for (i, s) in steps.iter().enumerate() {
            for d in &s.depends_on {
                if let Some(&j) = index.get(d.as_str()) {
                    if layer[j] + 1 > layer[i] {
                        layer[i] = layer[j] + 1;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut row = vec![0usize; steps.len()];
    let mut per_layer: HashMap<usize, usize> = HashMap::new();
    for i in 0..steps.len() {
        let n = per_layer.entry(layer[i]).or_default();
        row[i] = *n;
        *n += 1;
    }
    let pos = |i: usize| {
        (
            10 + layer[i] as i32 * (BOX_W + GAP_X),
            10 + row[i] as i32 * (BOX_H + GAP_Y),
        )
    };
    let cols = layer.iter().max().map_or(1, |m| m + 1) as i32;
    let rows = per_layer.values().max().copied().unwrap_or(1) as i32;
    let width = 20 + cols * BOX_W + (cols - 1) * GAP_X;
    let height = 20 + rows * BOX_H + (rows - 1).max(0) * GAP_Y;
    html! {
        svg.dag xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={"0 0 " (width) " " (height)} role="img" aria-label="workflow DAG" {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#5a6b8c" {}
                }
            }
            @for (i, s) in steps.iter().enumerate() {
                @for d in &s.depends_on {
                    @if let Some(&j) = index.get(d.as_str()) {
                        @let (x1, y1) = pos(j);
                        @let (x2, y2) = pos(i);
                        line x1=(x1 + BOX_W) y1=(y1 + BOX_H / 2) x2=(x2 - 2) y2=(y2 + BOX_H / 2)
                            stroke="#5a6b8c" stroke-width="1.3" marker-end="url(#arrow)" {}
                    }
                }
            }
            @for (i, s) in steps.iter().enumerate() {
                @let (x, y) = pos(i);
                g.dag-step data-step=(s.name) data-state=(s.state.as_deref().unwrap_or("")) {
                    title { (s.name) " (" (s.handler) ")" @if let Some(st) = &s.state { ": " (st) } }
                    rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="6"
                        fill=(fill(s.state.as_deref())) stroke=(stroke(s.state.as_deref())) stroke-width="1.5" {}
                    text x=(x + 8) y=(y + 16) font-weight="600" { (clip(&s.name, 22)) }
                    text x=(x + 8) y=(y + 31) fill="#555" {
                        (clip(&s.handler, 16))
                        @if let Some(st) = &s.state { " · " (st) }
                    }
                }
            }
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n - 1).collect();
        c.push('…');
        c
    }
}

/// Executions finished per minute: stacked bars of completed, failed and cancelled.
pub fn finished_chart(minutes: &[(chrono::DateTime<chrono::Utc>, i64, i64, i64)]) -> Markup {
    let w = 720;
    let h = 140;
    let (left, bottom, top) = (34, 20, 8);
    let max = minutes
        .iter()
        .map(|(_, a, b, c)| a + b + c)
        .max()
        .unwrap_or(0)
        .max(1);
    let n = minutes.len().max(1) as i32;
    let slot = (w - left - 4) / n;
    let plot_h = h - bottom - top;
    let y_of = |v: i64| (v as f64 / max as f64 * plot_h as f64).round() as i32;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(w) height=(h) viewBox={"0 0 " (w) " " (h)}
            role="img" aria-label="executions finished per minute, last hour" {
            line x1=(left) y1=(h - bottom) x2=(w - 2) y2=(h - bottom) stroke="#bbb" {}
            text x="2" y=(top + 8) { (max) }
            text x="2" y=(h - bottom) { "0" }
            @for (i, (t, ok, failed, cancelled)) in minutes.iter().enumerate() {
                @let x = left + i as i32 * slot + 1;
                @let h_ok = y_of(*ok);
                @let h_failed = y_of(*failed);
                @let h_cancelled = y_of(*cancelled);
                g.minute data-completed=(ok) data-failed=(failed) data-cancelled=(cancelled) {
                    title { (t.format("%H:%M")) ": " (ok) " completed, " (failed) " failed, " (cancelled) " cancelled" }
                    rect x=(x) y=(h - bottom - h_ok) width=((slot - 2).max(1)) height=(h_ok) fill="#1f8a4c" {}
                    rect x=(x) y=(h - bottom - h_ok - h_failed) width=((slot - 2).max(1)) height=(h_failed) fill="#c23a2b" {}
                    rect x=(x) y=(h - bottom - h_ok - h_failed - h_cancelled) width=((slot - 2).max(1)) height=(h_cancelled) fill="#7a7f8a" {}
                }
                @if i % 10 == 0 {
                    text x=(x) y=(h - 6) { (t.format("%H:%M")) }
                }
            }
        }
    }
}

/// A timeline bar: where `[start, start + len]` lies within `[0, total]`, in a 260 px strip.
pub fn bar(start_ms: i64, len_ms: i64, total_ms: i64, failed: bool) -> Markup {
    let width = 260.0;
    let total = total_ms.max(1) as f64;
    let x = (start_ms.max(0) as f64 / total * width).min(width - 2.0);
    let w = (len_ms.max(0) as f64 / total * width).clamp(2.0, width - x);
    html! {
        svg.bar xmlns="http://www.w3.org/2000/svg" width="260" height="10" viewBox="0 0 260 10" aria-hidden="true" {
            rect x="0" y="4" width="260" height="2" fill="#eef0f3" {}
            rect x=(format!("{x:.1}")) y="1" width=(format!("{w:.1}")) height="8" rx="2"
                fill=(if failed { "#c23a2b" } else { "#5b8def" }) {}
        }
    }
}
