//! `lineq workflow register|list|show`: the workflow registry.

use super::output::{out, outln};
use std::fmt::Write as _;
use std::io::Read;

use anyhow::Context;
use clap::Subcommand;
use sqlx::PgPool;

use lineq_core::queue;
use lineq_core::validation::{Namespace, ValidationError};
use lineq_orchestrator::workflow::store::{self, StoredWorkflow};
use lineq_orchestrator::workflow::{RetryPolicy, WorkflowDefinition};

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
    ///
    /// Every step's namespace must have a step queue (`lineq namespace create NAME`), or no
    /// worker could ever run it; a step in a namespace without one is refused with exit code 2,
    /// naming the step and the namespace, unless --create-namespaces creates the queues.
    Register {
        /// YAML files, one workflow each; `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// Create the step queue of every namespace the steps name that has none (as
        /// `lineq namespace create`; needs a role that may create queues).
        #[arg(long)]
        create_namespaces: bool,
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
        WorkflowCommand::Register {
            files,
            create_namespaces,
        } => register(pool, format, &files, create_namespaces).await,
        WorkflowCommand::List => list(pool, format).await,
        WorkflowCommand::Show { workflow, yaml } => show(pool, format, &workflow, yaml).await,
    }
}

async fn register(
    pool: &PgPool,
    format: Format,
    files: &[String],
    create_namespaces: bool,
) -> anyhow::Result<()> {
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
    check_namespaces(pool, &defs, create_namespaces).await?;

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

/// Every namespace a step names must have a step queue: submitting would otherwise be refused
/// later, or the step wait forever. Checks all files before registering any; with `create`,
/// creates the missing queues instead.
async fn check_namespaces(
    pool: &PgPool,
    defs: &[(String, WorkflowDefinition)],
    create: bool,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.map_err(lineq::Error::from)?;
    let mut checked = std::collections::HashSet::new();
    for (label, def) in defs {
        for step in &def.steps {
            let name = def.step_namespace(step);
            if !checked.insert(name.to_string()) {
                continue;
            }
            // Validated already (WorkflowDefinition::from_yaml); parsed again for its type.
            let ns = Namespace::new(name)?;
            let q = queue::step_queue(&ns);
            if create {
                queue::ensure_queue(&mut conn, &q).await?;
            } else if !queue::queue_exists(&mut conn, &q).await? {
                return Err(ValidationError::new(
                    "namespace",
                    format!(
                        "{label}: step {:?} of workflow {:?} runs in namespace '{ns}', which has no step queue, so no worker could run it; create it with `lineq namespace create {ns}` (or register with --create-namespaces)",
                        step.name, def.name
                    ),
                )
                .into());
            }
        }
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
