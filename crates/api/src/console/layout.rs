//! The page shell (head, navigation) and the small pieces every page uses. Everything is
//! rendered with [`maud`], which escapes every `(value)` it writes.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Executions.
    Executions,
    /// Dead letters.
    DeadLetters,
    /// Fleet.
    Fleet,
    /// Workflows.
    Workflows,
    /// None (login, errors).
    None,
}

/// A whole page. `logout_csrf` is the CSRF token for the logout button, on a server with a
/// login.
pub fn page(title: &str, nav: Nav, logout_csrf: Option<&str>, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! {
            a href=(href) class=@if nav == n { "current" } @else { "" } { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · lineq" }
                link rel="stylesheet" href=(super::assets::CSS_PATH);
                script src=(super::assets::JS_PATH) defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "lineq" }
                    nav {
                        (item(Nav::Executions, "/", "Executions"))
                        (item(Nav::DeadLetters, "/dead-letters", "Dead letters"))
                        (item(Nav::Fleet, "/fleet", "Fleet"))
                        (item(Nav::Workflows, "/workflows", "Workflows"))
                    }
                    @if let Some(csrf) = logout_csrf {
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A status as a coloured badge (the class is from a fixed set, never the raw value).
pub fn status(s: &str) -> Markup {
    let class = match s {
        "pending" | "enqueued" | "waiting" => "st-pending",
        "running" => "st-running",
        "completed" => "st-completed",
        "failed" => "st-failed",
        "cancelled" => "st-cancelled",
        "alive" => "st-completed",
        "silent" => "st-failed",
        "stopped" => "st-cancelled",
        _ => "st-unknown",
    };
    html! { span class={"badge " (class)} { (s) } }
}

/// A time as RFC 3339 to the millisecond, with the full value as its title.
pub fn time(t: &DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S%.3f")) }
    }
}

/// An optional time.
pub fn opt_time(t: Option<&DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

/// A duration in milliseconds, for people.
pub fn duration_ms(ms: i64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.2} s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60),
        ms => format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// How much of a JSON value a page shows before cutting it (the rest is a download away with
/// the REST API).
pub const JSON_SHOWN_BYTES: usize = 256 * 1024;

/// A JSON value, pretty-printed in a `<pre>` (escaped like any text).
pub fn json(v: &Value) -> Markup {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let cut = text.len() > JSON_SHOWN_BYTES;
    if cut {
        let mut end = JSON_SHOWN_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    html! {
        pre.json { (text) }
        @if cut { p.muted { "(cut at 256 KiB; the REST API has all of it)" } }
    }
}

/// Tags as `key=value` chips.
pub fn tags(v: &Value) -> Markup {
    html! {
        @if let Some(obj) = v.as_object() {
            @if obj.is_empty() { span.muted { "none" } }
            @for (k, v) in obj {
                span.tag {
                    span.tag-key { (k) }
                    "="
                    span.tag-value { (v.as_str().map_or_else(|| v.to_string(), str::to_string)) }
                }
                " "
            }
        }
    }
}

/// A short form of a UUID (its last 12 digits), with the whole one as the title.
pub fn short_id(id: &uuid::Uuid) -> Markup {
    let s = id.to_string();
    html! { code title=(s) { (s[24..]) } }
}

/// A link to an execution's page.
pub fn execution_link(id: &uuid::Uuid) -> Markup {
    html! { a.exec-link href={"/executions/" (id)} { (short_id(id)) } }
}

/// A text shortened to `max` characters for a table cell (the whole text is its title).
pub fn clip(s: &str, max: usize) -> Markup {
    if s.chars().count() <= max {
        html! { (s) }
    } else {
        let short: String = s.chars().take(max).collect();
        html! { span title=(s) { (short) "…" } }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// Nothing: for `Option<Markup>` defaults.
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}

/// Percent-encodes a query parameter value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
