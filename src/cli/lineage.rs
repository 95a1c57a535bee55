//! `lineq lineage ID` (draw the tree of an execution, event or correlation id) and
//! `lineq lineage check ID` (prove it is whole).

use super::output::{out, outln};
use std::fmt::Write;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use lineq_read::ReadPool;

use lineq_read::lineage::{self, EventNode, ExecutionNode, LineageTree, render};

use super::{Format, parse_id, print_json};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LineageArgs {
    #[command(subcommand)]
    pub command: Option<LineageCommand>,
    /// An execution id (the execution and everything below it), an event id (the chain from
    /// the root down to it and everything it caused) or a correlation id (every execution
    /// carrying it, children included).
    #[arg(required = true)]
    pub id: Option<String>,
    /// Draw the tree as a graph instead: Graphviz DOT (`| dot -Tsvg > tree.svg`) or Mermaid.
    /// `--format dot|mermaid` is accepted as the same.
    /// Takes precedence over --format.
    #[arg(long, value_enum)]
    pub graph: Option<Graph>,
}

#[derive(Debug, Subcommand)]
pub enum LineageCommand {
    /// Prove the tree of an execution, event or correlation id is whole: one root, every parent
    /// present and in the same tree, no cycles, every queue message's meta equal to the event
    /// that sent it. Prints what is wrong and exits 1 if anything is.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// An execution, event or correlation id; the whole tree of its root is checked.
    pub id: String,
}

/// `lineq lineage ID --format dot|mermaid` means `--graph dot|mermaid`: the global `--format`
/// is text or JSON for every command, and only this one can draw a picture, so the two graph
/// formats are accepted here as a spelling of `--graph` rather than added to every command.
pub fn graph_format_alias(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if !args.iter().skip(1).any(|a| a == "lineage") {
        return args;
    }
    let is_graph = |v: &std::ffi::OsStr| v == "dot" || v == "mermaid";
    let mut i = 1;
    while i < args.len() {
        if args[i] == "--format" && args.get(i + 1).is_some_and(|v| is_graph(v)) {
            args[i] = "--graph".into();
            i += 2;
            continue;
        }
        if let Some(v) = args[i].to_str().and_then(|a| a.strip_prefix("--format=")) {
            if is_graph(std::ffi::OsStr::new(v)) {
                args[i] = format!("--graph={v}").into();
            }
        }
        i += 1;
    }
    args
}

/// Graph languages for `--graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Graph {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

pub async fn run(reads: &ReadPool, format: Format, a: LineageArgs) -> anyhow::Result<()> {
    if let Some(LineageCommand::Check(c)) = a.command {
        return check(reads, format, c).await;
    }
    let id = parse_id("id", a.id.as_deref().unwrap_or_default())?;
    let (tree, _) = reads
        .or_primary(|pool| async move { lineage::lineage(&pool, id).await })
        .await?;
    match (a.graph, format) {
        (Some(Graph::Dot), _) => out!("{}", render::to_dot(&tree)),
        (Some(Graph::Mermaid), _) => out!("{}", render::to_mermaid(&tree)),
        (None, Format::Json) => print_json(&tree)?,
        (None, Format::Text) => out!("{}", text(&tree)),
    }
    Ok(())
}

async fn check(reads: &ReadPool, format: Format, a: CheckArgs) -> anyhow::Result<()> {
    let id = parse_id("id", &a.id)?;
    let (report, _) = reads
        .or_primary(|pool| async move { lineage::check(&pool, id).await })
        .await?;
    match format {
        Format::Json => print_json(&report)?,
        Format::Text => {
            let roots: Vec<String> = report.roots.iter().map(ToString::to_string).collect();
            outln!(
                "checked root {}: {} executions, {} events, {} messages, {} dead letters",
                roots.join(", "),
                report.executions,
                report.events,
                report.messages,
                report.dead_letters
            );
            for f in &report.faults {
                outln!("FAULT {f}");
            }
            if report.is_whole() {
                outln!(
                    "whole: one root, every parent present and in the same tree, no cycles, every message's meta equal to its event"
                );
            }
        }
    }
    if !report.is_whole() {
        bail!(
            "lineage check found {} fault(s) under {}",
            report.faults.len(),
            id
        );
    }
    Ok(())
}

/// Something drawn on a line of the tree: an execution header or an event. An event listed
/// at the top of its execution although its parent is elsewhere (a step that continued after
/// its children ended) says where it came from.
enum Item<'a> {
    Execution(&'a ExecutionNode),
    Event(&'a EventNode, bool),
}

impl<'a> Item<'a> {
    fn time(&self) -> Option<DateTime<Utc>> {
        match self {
            Item::Execution(x) => x
                .created_at
                .or_else(|| x.events.first().map(|e| e.created_at)),
            Item::Event(e, _) => Some(e.created_at),
        }
    }

    fn children(&self) -> Vec<Item<'a>> {
        let mut kids: Vec<Item<'a>> = match self {
            Item::Execution(x) => x
                .events
                .iter()
                .map(|e| {
                    let came_from_elsewhere =
                        e.parent_execution.is_some() && e.parent_event_id != x.parent_event_id;
                    Item::Event(e, came_from_elsewhere)
                })
                .chain(x.executions.iter().map(Item::Execution))
                .collect(),
            Item::Event(e, _) => e
                .children
                .iter()
                .map(|c| Item::Event(c, false))
                .chain(e.executions.iter().map(Item::Execution))
                .collect(),
        };
        // Stable: ties keep events before executions, as written.
        kids.sort_by_key(Item::time);
        kids
    }

    fn line(&self) -> String {
        match self {
            Item::Execution(x) => {
                let mut s = format!(
                    "▸ execution {}  {}  [{}]",
                    x.execution_id, x.workflow_name, x.status
                );
                if let Some(ms) = x.duration_ms {
                    let _ = write!(s, "  {ms} ms");
                }
                if let Some(step) = &x.parent_step {
                    let _ = write!(s, "  (spawned by step {step})");
                }
                s
            }
            Item::Event(e, came_from_elsewhere) => {
                let mut s = e.event_type.clone();
                if let Some(step) = &e.step {
                    let _ = write!(s, "  step={step}");
                }
                if let Some(a) = e.attempt {
                    let _ = write!(s, " attempt={a}");
                }
                if let Some(w) = &e.worker_id {
                    let _ = write!(s, " worker={w}");
                }
                if let Some(why) = super::render::throttled(&e.event_type, &e.payload) {
                    let _ = write!(s, " {why}");
                }
                if let Some(msg) = error_message(&e.payload) {
                    let _ = write!(s, " error={msg:?}");
                }
                let _ = write!(s, "  {}", e.created_at.format("%H:%M:%S%.3f"));
                if let Some(ms) = e.duration_ms {
                    let _ = write!(s, " (+{ms} ms)");
                }
                if let (true, Some(x)) = (*came_from_elsewhere, e.parent_execution) {
                    let _ = write!(
                        s,
                        "  ← after {} of execution {x}",
                        e.parent_event_type.as_deref().unwrap_or("an event")
                    );
                }
                s
            }
        }
    }
}

/// The human part of an error payload, wherever the writer put it.
fn error_message(payload: &serde_json::Value) -> Option<String> {
    let err = payload.get("error").filter(|v| !v.is_null())?;
    Some(
        err.get("message")
            .or_else(|| err.get("error").and_then(|x| x.get("message")))
            .and_then(|m| m.as_str())
            .map_or_else(|| err.to_string(), str::to_string),
    )
}

/// The tree for people: each execution a header with its events below it, each event under
/// its parent, child executions under the event that spawned them.
pub fn text(tree: &LineageTree) -> String {
    let mut s = String::new();
    let items: Vec<Item<'_>> = tree.executions.iter().map(Item::Execution).collect();
    for item in &items {
        draw(&mut s, item, "", true, true);
    }
    let _ = writeln!(
        s,
        "{} executions, {} events",
        tree.execution_count, tree.event_count
    );
    s
}

fn draw(s: &mut String, item: &Item<'_>, prefix: &str, last: bool, top: bool) {
    let branch = match (top, last) {
        (true, _) => "",
        (false, true) => "└─ ",
        (false, false) => "├─ ",
    };
    let _ = writeln!(s, "{prefix}{branch}{}", item.line());
    let kids = item.children();
    let next = if top {
        prefix.to_string()
    } else {
        format!("{prefix}{}", if last { "   " } else { "│  " })
    };
    for (i, k) in kids.iter().enumerate() {
        draw(s, k, &next, i + 1 == kids.len(), false);
    }
}
