//! `lineq workflow register|list|show`: the workflow registry.

use super::output::{out, outln};
use std::fmt::Write as _;
use std::io::Read;

use anyhow::Context;
use clap::Subcommand;
use sqlx::PgPool;

use lineq::orchestration::workflow::store::{self, StoredWorkflow};
use lineq::orchestration::workflow::{RetryPolicy, WorkflowDefinition};
use lineq::shared::validation::ValidationError;

use super::{Format, print_json};

/// The `lineq workflow` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Register workflow definitions from YAML files.
    ///
    /// A file without `version:` becomes the next version of its workflow (1 for a new name),
    /// unless the latest version holds exactly the same definition, which is left unchanged.
    /// A file with `version: N` registers version N; if N is already registered with the same
    /// definition nothing changes, with a different one it is refused with exit code 2:
    /// registered versions are immutable.
    ///
    /// Every file is read and checked before any is registered, so a malformed file (exit 2)
    /// registers nothing. Each file is then registered on its own: a version conflict stops at
    /// that file and keeps the ones before it (each is printed as it is registered).
    Register {
        /// YAML files, one workflow each; `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// List registered workflows with their latest version.
    List,
    /// Show a workflow's definition: the latest version, or NAME@VERSION.
    Show {
        /// NAME or NAME@VERSION (e.g. `order@3`).
        #[arg(value_name = "NAME[@VERSION]")]
        workflow: String,
        /// Print the definition as YAML (what `register` reads), whatever --format says.
        #[arg(long)]
        yaml: bool,
    },
}

/// Runs a `lineq workflow` subcommand.
pub async fn run(pool: &PgPool, format: Format, cmd: WorkflowCommand) -> anyhow::Result<()> {
    match cmd {
        WorkflowCommand::Register { files } => register(pool, format, &files).await,
        WorkflowCommand::List => list(pool, format).await,
        WorkflowCommand::Show { workflow, yaml } => show(pool, format, &workflow, yaml).await,
    }
}

async fn register(pool: &PgPool, format: Format, files: &[String]) -> anyhow::Result<()> {
    // Parse and validate everything first: one bad file must not leave the others half
    // registered.
    let mut defs = Vec::with_capacity(files.len());
    let mut stdin_read = false;
    for file in files {
        let (label, text) = if file == "-" {
            if stdin_read {
                return Err(
                    ValidationError::new("file", "`-` (stdin) given more than once").into(),
                );
            }
            stdin_read = true;
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| ValidationError::new("file", format!("cannot read stdin: {e}")))?;
            ("stdin".to_string(), s)
        } else {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ValidationError::new("file", format!("cannot read {file}: {e}")))?;
            (file.clone(), text)
        };
        // The typed ValidationError stays in the chain (so the exit code is 2); the context
        // says which file it came from.
        let def = WorkflowDefinition::from_yaml(&text).with_context(|| label.clone())?;
        defs.push((label, def));
    }

    let mut done = Vec::with_capacity(defs.len());
    for (label, def) in &defs {
        let r = store::register(pool, def)
            .await
            .with_context(|| label.clone())?;
        if format == Format::Text {
            if r.created {
                outln!("registered {} v{}", r.name, r.version);
            } else {
                outln!("{} v{} already registered (unchanged)", r.name, r.version);
            }
        }
        done.push(r);
    }
    if format == Format::Json {
        print_json(&done)?;
    }
    Ok(())
}

async fn list(pool: &PgPool, format: Format) -> anyhow::Result<()> {
    let workflows = store::list(pool).await?;
    match format {
        Format::Json => print_json(&workflows)?,
        Format::Text => {
            let width = workflows
                .iter()
                .map(|w| w.name.len())
                .max()
                .unwrap_or(0)
                .max("NAME".len());
            outln!(
                "{:<width$}  {:>6}  {:>8}  {:>5}  UPDATED",
                "NAME",
                "LATEST",
                "VERSIONS",
                "STEPS"
            );
            for w in &workflows {
                outln!(
                    "{:<width$}  {:>6}  {:>8}  {:>5}  {}",
                    w.name,
                    format!("v{}", w.latest_version),
                    w.versions,
                    w.steps,
                    w.updated_at.to_rfc3339()
                );
            }
        }
    }
    Ok(())
}

async fn show(pool: &PgPool, format: Format, reference: &str, yaml: bool) -> anyhow::Result<()> {
    let (name, version) = store::parse_ref(reference)?;
    let wf = store::get(pool, &name, version)
        .await?
        .ok_or_else(|| lineq::Error::NotFound {
            what: "workflow",
            id: reference.to_string(),
        })?;
    if yaml {
        out!("{}", wf.definition.to_yaml()?);
        return Ok(());
    }
    match format {
        Format::Json => print_json(&wf)?,
        Format::Text => {
            let all: Vec<i32> = store::versions(pool, &name)
                .await?
                .iter()
                .map(|v| v.version)
                .collect();
            out!("{}", render(&wf, &all));
        }
    }
    Ok(())
}

/// A stored workflow, for people.
fn render(wf: &StoredWorkflow, all_versions: &[i32]) -> String {
    let d = &wf.definition;
    let mut s = String::new();
    let _ = writeln!(s, "workflow    {}", wf.name);
    let others = all_versions
        .iter()
        .map(|v| format!("v{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(s, "version     v{} (registered: {others})", wf.version);
    let _ = writeln!(s, "description {}", d.description.as_deref().unwrap_or("-"));
    let _ = writeln!(s, "namespace   {}", d.namespace);
    let _ = writeln!(s, "registered  {}", wf.created_at.to_rfc3339());
    let _ = writeln!(s, "steps:");
    for step in &d.steps {
        let _ = writeln!(s, "  {}", step.name);
        let _ = writeln!(s, "    handler     {}", step.handler);
        let _ = writeln!(s, "    namespace   {}", d.step_namespace(step));
        let deps = if step.depends_on.is_empty() {
            "-".to_string()
        } else {
            step.depends_on.join(", ")
        };
        let _ = writeln!(s, "    depends_on  {deps}");
        let _ = writeln!(s, "    retry       {}", retry(&step.retry));
        let timeout = step
            .timeout_ms
            .map_or("none".to_string(), |ms| format!("{ms} ms"));
        let _ = writeln!(s, "    timeout     {timeout}");
        let on_failure = serde_json::to_value(step.on_failure)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", step.on_failure));
        let _ = writeln!(s, "    on_failure  {on_failure}");
        if let Some(p) = &step.params {
            let _ = writeln!(s, "    params      {p}");
        }
    }
    s
}

/// A retry policy in one line.
fn retry(r: &RetryPolicy) -> String {
    if r.max_attempts <= 1 {
        return "none (1 attempt)".to_string();
    }
    let mut s = format!(
        "{} attempts, backoff {} ms x{} up to {} ms",
        r.max_attempts, r.backoff_ms, r.multiplier, r.max_backoff_ms
    );
    if r.jitter {
        s.push_str(", jitter");
    }
    if !r.retry_on.is_empty() {
        let _ = write!(s, ", on {}", r.retry_on.join(", "));
    }
    s
}
