//! `lineq schedule create|list|show|pause|resume|delete`: cron schedules that start executions.

use super::output::{out, outln};
use std::fmt::Write as _;

use clap::{Subcommand, ValueEnum};
use serde::Serialize;
use sqlx::PgPool;

use lineq_core::validation::ValidationError;
use lineq_orchestrator::schedule::{self, Fire, Missed, NewSchedule, Schedule};

use super::submit::read_input;
use super::{Format, print_json};

/// The `lineq schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: at every occurrence of a cron expression an orchestrator submits
    /// TARGET (what `lineq submit` takes: a registered workflow NAME or NAME@VERSION, or a
    /// handler) with the input and tags given here.
    ///
    /// Each occurrence fires exactly once however many orchestrators run; every fired
    /// execution's lineage starts at a `schedule_fired` event naming the schedule and the
    /// occurrence. Nothing is written on bad input (exit 2, naming the field): an invalid cron
    /// expression, an unknown time zone, a name already taken in the namespace, a target,
    /// input or tags `lineq submit` would refuse.
    ///
    /// Examples:
    ///
    ///   lineq schedule create nightly-report --cron '0 2 * * *' --timezone Europe/Paris report --input '{"day": "yesterday"}'
    ///
    ///   lineq schedule create heartbeat --cron '*/10 * * * * *' echo --input '{"ping": true}' --tag team=ops
    ///
    ///   lineq schedule create sync --cron '@hourly' sync_accounts --missed catch-up --catch-up-max 3
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),
    /// List schedules (every namespace, or --namespace): state, expression, target, next and
    /// last fire.
    List {
        /// Only this namespace's schedules.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Show a schedule with its next fire times and its latest fires.
    ///
    /// Example: lineq schedule show nightly-report --next 5
    Show {
        /// The schedule's name.
        name: String,
        /// Its namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// How many upcoming fire times to show.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        next: u16,
        /// How many of the latest fires to show.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(0..=1000))]
        fires: u16,
    },
    /// Pause a schedule: nothing fires until it is resumed (a fire in progress finishes
    /// first).
    Pause {
        /// The schedule's name.
        name: String,
        /// Its namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Resume a paused schedule from now on: occurrences that fell while it was paused do not
    /// fire.
    Resume {
        /// The schedule's name.
        name: String,
        /// Its namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// Delete a schedule. The executions it started stay.
    Delete {
        /// The schedule's name.
        name: String,
        /// Its namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

/// `lineq schedule create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The schedule's name, unique in its namespace: 1 to 128 letters, digits, '_', '.', ':'
    /// and '-'.
    pub name: String,
    /// What each occurrence submits, as `lineq submit` takes it: a registered workflow (NAME or
    /// NAME@VERSION) or a handler.
    #[arg(value_name = "WORKFLOW|HANDLER")]
    pub target: String,
    /// The cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with
    /// seconds first ('*/5 * * * * *': every 5 seconds), or @yearly, @monthly, @weekly,
    /// @daily, @hourly. Fields take lists, ranges, steps, names (MON, JAN), L, W and #.
    #[arg(long, value_name = "EXPR")]
    pub cron: String,
    /// The IANA time zone the expression is read in, e.g. Europe/Paris (default UTC).
    #[arg(long, default_value = "UTC", value_name = "TZ")]
    pub timezone: String,
    /// The input of each execution, as JSON; `@FILE` reads a file, `-` standard input.
    #[arg(long, default_value = "null")]
    pub input: String,
    /// The namespace of the schedule and of its executions.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// A tag KEY=VALUE each execution carries (repeatable; at most 20).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Occurrences missed while no orchestrator ran: `skip` fires the latest one once and
    /// passes over the others; `catch-up` fires the latest --catch-up-max of them, oldest
    /// first.
    #[arg(long, value_enum, default_value_t = MissedArg::Skip)]
    pub missed: MissedArg,
    /// With --missed catch-up: the most missed occurrences to fire (1 to 1000).
    #[arg(long, value_name = "N")]
    pub catch_up_max: Option<i64>,
}

/// `--missed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MissedArg {
    /// Fire the latest missed occurrence once.
    Skip,
    /// Fire up to --catch-up-max missed occurrences.
    CatchUp,
}

/// A schedule with what `show` adds.
#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    schedule: Schedule,
    /// The next fire times (none while paused).
    upcoming: Vec<chrono::DateTime<chrono::Utc>>,
    /// The latest fires, newest first.
    recent_fires: Vec<Fire>,
}

/// Runs a `lineq schedule` subcommand.
pub async fn run(pool: &PgPool, format: Format, cmd: ScheduleCommand) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Create(a) => {
            let s = schedule::create(pool, &new_schedule(a)?).await?;
            print_one(format, &s, "created")?;
        }
        ScheduleCommand::List { namespace } => {
            let all = schedule::list(pool, namespace.as_deref()).await?;
            match format {
                Format::Json => print_json(&all)?,
                Format::Text => out!("{}", table(&all)),
            }
        }
        ScheduleCommand::Show {
            name,
            namespace,
            next,
            fires,
        } => {
            let s = schedule::get(pool, &namespace, &name).await?;
            let shown = Shown {
                upcoming: s.upcoming(usize::from(next)),
                recent_fires: schedule::recent_fires(pool, s.schedule_id, i64::from(fires)).await?,
                schedule: s,
            };
            match format {
                Format::Json => print_json(&shown)?,
                Format::Text => out!("{}", details(&shown)),
            }
        }
        ScheduleCommand::Pause { name, namespace } => {
            let s = schedule::pause(pool, &namespace, &name).await?;
            print_one(format, &s, "paused")?;
        }
        ScheduleCommand::Resume { name, namespace } => {
            let s = schedule::resume(pool, &namespace, &name).await?;
            print_one(format, &s, "resumed")?;
        }
        ScheduleCommand::Delete { name, namespace } => {
            let s = schedule::delete(pool, &namespace, &name).await?;
            print_one(format, &s, "deleted")?;
        }
    }
    Ok(())
}

fn new_schedule(a: CreateArgs) -> anyhow::Result<NewSchedule> {
    let missed = match (a.missed, a.catch_up_max) {
        (MissedArg::Skip, None) => Missed::Skip,
        (MissedArg::Skip, Some(n)) => {
            return Err(ValidationError::new(
                "catch_up_max",
                format!("--catch-up-max applies to --missed catch-up only (got {n})"),
            )
            .into());
        }
        (MissedArg::CatchUp, None) => {
            return Err(ValidationError::new(
                "catch_up_max",
                "--missed catch-up needs --catch-up-max N (1 to 1000): the most missed occurrences to fire",
            )
            .into());
        }
        (MissedArg::CatchUp, Some(n)) => match u32::try_from(n) {
            Ok(max) if (1..=1000).contains(&max) => Missed::CatchUp { max },
            _ => {
                return Err(ValidationError::new(
                    "catch_up_max",
                    format!("it is 1 to 1000 (got {n})"),
                )
                .into());
            }
        },
    };
    let mut s = NewSchedule::new(a.name, a.cron, a.target)
        .timezone(a.timezone)
        .input(read_input(&a.input)?)
        .namespace(a.namespace)
        .missed(missed);
    for t in &a.tags {
        let (k, v) = lineq_core::tags::parse_tag(t)?;
        if s.tags.contains_key(&k) {
            return Err(ValidationError::new("tags", format!("tag {k:?} is given twice")).into());
        }
        s = s.tag(k, v);
    }
    Ok(s)
}

fn print_one(format: Format, s: &Schedule, what: &str) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(s)?,
        Format::Text => {
            let next = s
                .next_fire_at
                .map_or_else(|| "-".to_string(), |t| t.to_rfc3339());
            outln!(
                "{what} schedule {} (namespace {}): {} {} -> {}; next fire {}",
                s.name,
                s.namespace,
                s.cron,
                s.timezone,
                s.target,
                if s.paused { "none (paused)" } else { &next }
            );
        }
    }
    Ok(())
}

fn state(s: &Schedule) -> &'static str {
    if s.paused { "paused" } else { "active" }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
    )
}

fn table(all: &[Schedule]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:<24} {:<7} {:<20} {:<16} {:<24} {:<25} {:>7} LAST FIRED",
        "NAMESPACE", "NAME", "STATE", "CRON", "TIMEZONE", "TARGET", "NEXT FIRE", "FIRED"
    );
    for x in all {
        let _ = writeln!(
            s,
            "{:<12} {:<24} {:<7} {:<20} {:<16} {:<24} {:<25} {:>7} {}",
            x.namespace,
            x.name,
            state(x),
            x.cron,
            x.timezone,
            x.target,
            if x.paused {
                "-".to_string()
            } else {
                time(x.next_fire_at)
            },
            x.fired,
            time(x.last_fired_at),
        );
    }
    s
}

fn details(d: &Shown) -> String {
    let x = &d.schedule;
    let mut s = String::new();
    let _ = writeln!(s, "schedule   {} (namespace {})", x.name, x.namespace);
    let _ = writeln!(s, "id         {}", x.schedule_id);
    let _ = writeln!(s, "state      {}", state(x));
    let _ = writeln!(s, "cron       {} ({})", x.cron, x.timezone);
    let _ = writeln!(s, "target     {}", x.target);
    let _ = writeln!(s, "input      {}", x.input);
    let _ = writeln!(s, "tags       {}", x.tags);
    let missed = match x.catch_up_max {
        Some(n) => format!("{} (at most {n})", x.missed),
        None => x.missed.clone(),
    };
    let _ = writeln!(s, "missed     {missed}");
    let _ = writeln!(s, "fired      {} (skipped {})", x.fired, x.skipped);
    if let Some(e) = &x.last_error {
        let _ = writeln!(s, "last error {e}");
    }
    if d.upcoming.is_empty() {
        let _ = writeln!(
            s,
            "next fires none{}",
            if x.paused { " (paused)" } else { "" }
        );
    } else {
        let _ = writeln!(s, "next fires");
        for t in &d.upcoming {
            let _ = writeln!(s, "  {}", time(Some(*t)));
        }
    }
    if !d.recent_fires.is_empty() {
        let _ = writeln!(s, "latest fires");
        for f in &d.recent_fires {
            let _ = writeln!(
                s,
                "  {}  execution {}",
                time(Some(f.occurrence)),
                f.execution_id
            );
        }
    }
    s
}
