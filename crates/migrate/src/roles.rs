//! Least-privilege PostgreSQL roles (`lineq migrate --roles`).
//!
//! Four group roles (`NOLOGIN`), named `<prefix>_orchestrator`, `<prefix>_worker`,
//! `<prefix>_submitter` and `<prefix>_reader` (prefix `lineq` by default):
//!
//! | role | may | may not |
//! | --- | --- | --- |
//! | orchestrator | read and write every lineq table (`DELETE` for `lineq prune`), use every queue, create queues through `lineq.create_queue`, call every lineq function | create objects anywhere (no `CREATE` on schema `pgmq` or `lineq`), write `pgmq.meta`, run migrations |
//! | worker | call the worker protocol (`lineq.worker_*`: register, heartbeat, claim, extend, report, release, reject, cancellation), which checks that a worker reports only what it holds; see which queues exist; `LISTEN` | write any table, read events, executions or inputs outside its claims, send to any queue, create queues |
//! | submitter | submit executions (`lineq.submit*`), tag and cancel them, read executions, steps, events and workflows | write any table, use a queue, run or report steps |
//! | reader | `SELECT` every lineq table and view and every queue table (and sequence, for `pgmq.metrics()`), run the lineage functions | write anything, consume messages, call the functions that write |
//!
//! The functions that act with more than the caller's privileges are lineq's `SECURITY
//! DEFINER` functions (docs/sql-api.md); each is granted to the groups that may call it and
//! to nobody else. Functions that run with the caller's privileges grant nothing by being
//! callable, so the reader may call those.
//!
//! Login roles join one group each; they are created by the operator (`CREATE ROLE … LOGIN IN
//! ROLE lineq_worker`) or by [`create_roles`] itself ([`RoleOptions::login`]). A login role made
//! here also gets `SET role = <group>` in this database, so its sessions act as the group: what it
//! creates (an orchestrator creating a namespace's queue) is owned by the group, and the default
//! privileges below apply to it.
//!
//! Privileges are reconciled, not accumulated: each run revokes what the three groups hold on the
//! lineq and pgmq schemas and grants exactly the set above, in one transaction, under the
//! migration's advisory lock. So a run is idempotent, concurrent runs wait for each other, and a
//! running fleet never sees a moment without its privileges.
//!
//! Queues created later (a namespace created by `lineq namespace create`) are covered by default
//! privileges for objects created by the role that ran this and by the orchestrator group. The
//! worker then holds `SELECT, INSERT, UPDATE, DELETE` on both tables of such a queue (default
//! privileges cannot tell a queue's live table from its archive); the next run narrows that to
//! the exact set.
//!
//! Every statement is built by PostgreSQL's own `format('%I')` (identifiers) and `format('%L')`
//! (the password verifier) from a constant template and bound parameters: nothing from outside
//! is ever spliced into SQL here, and role names are also validated strictly first.

use std::fmt;

use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use lineq_core::error::{Error, Result};
use lineq_core::validation::{QueueName, ValidationError};

use crate::MIGRATE_LOCK;

/// The prefix of the group roles unless told otherwise.
pub const DEFAULT_ROLE_PREFIX: &str = "lineq";
/// PostgreSQL cuts identifiers at 63 bytes; a longer role name would silently be another name.
pub const MAX_ROLE_NAME_LEN: usize = 63;
/// The shortest password accepted for a login role.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The longest password accepted for a login role.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The `SECURITY DEFINER` functions of schema `lineq` each group may call, as patterns of
/// their names (`LIKE`). Keep this in step with the SQL interface (docs/sql-api.md): a role
/// that needs more fails with "permission denied", which `tests/roles.rs` catches.
const WORKER_FUNCTIONS: &[&str] = &["worker\\_%"];
/// What an application that submits work may call: submit, tag, cancel, and manage
/// schedules (never fire them: `lineq._fire_schedule` is the orchestrator's).
const SUBMITTER_FUNCTIONS: &[&str] = &["submit%", "update\\_tags", "cancel", "schedule\\_%"];
/// What a submitting application may read: its executions and their story, schedules, and
/// what waits for a flow-control key.
const SUBMITTER_TABLES: &[&str] = &[
    "executions",
    "steps",
    "events",
    "workflows",
    "schedules",
    "schedule_fires",
    "flow_waiting",
    "flow_keys",
];

/// One of the three groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleKind {
    /// Orchestrators, `lineq serve`, submitting clients, `lineq prune`.
    Orchestrator,
    /// Workers.
    Worker,
    /// Applications that submit work (in their own transactions), tag and cancel it.
    Submitter,
    /// Lineage queries and dashboards.
    Reader,
}

impl RoleKind {
    /// Every kind, in the order roles are created.
    pub const ALL: [RoleKind; 4] = [
        Self::Orchestrator,
        Self::Worker,
        Self::Submitter,
        Self::Reader,
    ];

    /// The kind's name, which is also the suffix of its group role.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Orchestrator => "orchestrator",
            Self::Worker => "worker",
            Self::Submitter => "submitter",
            Self::Reader => "reader",
        }
    }

    /// Parses `orchestrator`, `worker`, `submitter` or `reader`.
    pub fn parse(s: &str) -> std::result::Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "role_kind",
                    format!(
                        "{s:?} is not a role kind; use orchestrator, worker, submitter or reader"
                    ),
                )
            })
    }
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name: 1 to 63 characters of `a-z`, `0-9` and `_`, starting with a letter or `_`, not
/// `pg_…` (reserved by PostgreSQL) and not a word PostgreSQL reads as something else in a role
/// position (`public`, `none`, `current_user`, …). Such a name never needs quoting, but is
/// quoted anyway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RoleName(String);

impl RoleName {
    /// Validates `name`.
    pub fn new(name: &str) -> std::result::Result<Self, ValidationError> {
        let err = |why: &str| {
            ValidationError::new(
                "role",
                format!(
                    "{why}; a role name is 1 to {MAX_ROLE_NAME_LEN} characters of a-z, 0-9 and _, starting with a letter or _ (got {name:?})"
                ),
            )
        };
        if name.is_empty() || name.len() > MAX_ROLE_NAME_LEN {
            return Err(err(&format!("it is {} characters long", name.len())));
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            return Err(err("it does not start with a lowercase letter or _"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(err(&format!("it contains {c:?}")));
        }
        if name.starts_with("pg_") {
            return Err(err("names starting with pg_ are reserved by PostgreSQL"));
        }
        const RESERVED: &[&str] = &[
            "public",
            "none",
            "current_user",
            "current_role",
            "session_user",
            "user",
            "all",
        ];
        if RESERVED.contains(&name) {
            return Err(err("it is a reserved word"));
        }
        Ok(Self(name.to_string()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password, kept out of `Debug` output and logs.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Validates `password`: 12 to 1024 printable ASCII characters. ASCII only because
    /// PostgreSQL normalises other passwords with SASLprep before hashing, and a verifier made
    /// here must match what it would make.
    pub fn new(password: &str) -> std::result::Result<Self, ValidationError> {
        let n = password.len();
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
            return Err(ValidationError::new(
                "password",
                format!(
                    "a password is {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters (got {n})"
                ),
            ));
        }
        if !password.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(ValidationError::new(
                "password",
                "a password is printable ASCII (letters, digits, punctuation, space)",
            ));
        }
        Ok(Self(password.to_string()))
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A login role to create (or update) and put into a group.
#[derive(Debug, Clone)]
pub struct LoginRole {
    /// The role.
    pub name: RoleName,
    /// Its group.
    pub kind: RoleKind,
    /// Its password; `None` leaves an existing password alone (and a new role without one, for
    /// certificate or peer authentication).
    pub password: Option<Password>,
}

/// What [`create_roles`] should create.
#[derive(Debug, Clone)]
pub struct RoleOptions {
    prefix: String,
    logins: Vec<LoginRole>,
}

impl Default for RoleOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_ROLE_PREFIX.to_string(),
            logins: Vec::new(),
        }
    }
}

impl RoleOptions {
    /// The default groups (`lineq_orchestrator`, `lineq_worker`, `lineq_reader`), no logins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the groups `<prefix>_orchestrator`, `<prefix>_worker`, `<prefix>_reader`, e.g. to
    /// keep two deployments in one cluster apart (roles belong to the cluster, not a database).
    pub fn prefix(mut self, prefix: &str) -> std::result::Result<Self, ValidationError> {
        let longest = format!("{prefix}_{}", RoleKind::Orchestrator.as_str());
        RoleName::new(&longest).map_err(|e| {
            ValidationError::new(
                "role_prefix",
                format!("{prefix:?} makes a bad role name: {e}"),
            )
        })?;
        self.prefix = prefix.to_string();
        Ok(self)
    }

    /// Also creates (or updates) login role `login` in group `kind`.
    pub fn login(mut self, login: LoginRole) -> Self {
        self.logins.push(login);
        self
    }

    /// The group role of `kind`.
    pub fn group(&self, kind: RoleKind) -> RoleName {
        RoleName(format!("{}_{}", self.prefix, kind.as_str()))
    }

    /// The login roles asked for.
    pub fn logins(&self) -> &[LoginRole] {
        &self.logins
    }
}

/// What a login role got.
#[derive(Debug, Clone, Serialize)]
pub struct LoginReport {
    /// The role.
    pub name: String,
    /// Its group role.
    pub group: String,
    /// True when this run created it.
    pub created: bool,
    /// True when this run set its password.
    pub password_set: bool,
}

/// What [`create_roles`] found and did.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    /// The role that ran it: default privileges cover the objects it creates later.
    pub owner: String,
    /// The orchestrator group.
    pub orchestrator: String,
    /// The worker group.
    pub worker: String,
    /// The submitter group.
    pub submitter: String,
    /// The reader group.
    pub reader: String,
    /// Roles (groups and logins) this run created; the others existed.
    pub created: Vec<String>,
    /// The login roles handled.
    pub logins: Vec<LoginReport>,
    /// The step queues the worker group may consume.
    pub step_queues: Vec<String>,
}

/// Creates the three group roles (and any login roles asked for) and reconciles their privileges
/// in this database. Run it after [`crate::migrate`], as a role that owns the lineq and
/// pgmq objects and may create roles (a superuser, or the database owner with `CREATEROLE`).
/// Idempotent; concurrent runs wait for each other.
pub async fn create_roles(pool: &PgPool, options: &RoleOptions) -> Result<RoleReport> {
    let mut conn = pool.acquire().await?;
    crate::lock_migrations(&mut conn).await?;
    let result = create_roles_locked(&mut conn, options).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await;
    let report = result?;
    unlock?;
    Ok(report)
}

#[expect(
    clippy::too_many_lines,
    reason = "the roles, each created and configured in one place, in dependency order"
)]
async fn create_roles_locked(conn: &mut PgConnection, o: &RoleOptions) -> Result<RoleReport> {
    let orchestrator = o.group(RoleKind::Orchestrator);
    let worker = o.group(RoleKind::Worker);
    let submitter = o.group(RoleKind::Submitter);
    let reader = o.group(RoleKind::Reader);
    let groups = [&orchestrator, &worker, &submitter, &reader];

    let (owner, superuser): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await?;
    if groups.iter().any(|g| g.as_str() == owner) {
        return Err(invalid(
            "role",
            format!("run this as the role that owns the schema, not as {owner}"),
        ));
    }
    for l in &o.logins {
        if l.name.0 == owner {
            return Err(invalid(
                "login_role",
                format!("{owner} is the role running this; a login role needs a name of its own"),
            ));
        }
        if groups.contains(&&l.name) {
            return Err(invalid(
                "login_role",
                format!(
                    "{} is a group role; a login role needs a name of its own",
                    l.name
                ),
            ));
        }
    }
    let migrated: bool = sqlx::query_scalar(
        "SELECT to_regclass('lineq.events') IS NOT NULL AND to_regclass('pgmq.meta') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !migrated {
        return Err(Error::InvalidState(
            "the database is not migrated: run `lineq migrate` first".into(),
        ));
    }

    let mut created = Vec::new();
    for g in groups {
        if ensure_role(conn, g, "CREATE ROLE %I NOLOGIN").await? {
            created.push(g.0.clone());
        }
    }
    let mut logins = Vec::new();
    for l in &o.logins {
        let was_created = ensure_role(conn, &l.name, "CREATE ROLE %I LOGIN").await?;
        if was_created {
            created.push(l.name.0.clone());
        }
        logins.push((l, was_created));
    }

    let mut tx = conn.begin().await?;
    // A non-superuser may only set default privileges for roles it is a member of.
    if !superuser {
        let member: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
            .bind(orchestrator.as_str())
            .fetch_one(&mut *tx)
            .await?;
        if !member {
            ddl(&mut tx, "GRANT %I TO %I", &[orchestrator.as_str(), &owner]).await?;
        }
    }
    let step_queues = grant_privileges(
        &mut tx,
        &owner,
        [&orchestrator, &worker, &submitter, &reader],
    )
    .await?;
    let mut login_reports = Vec::new();
    for (l, was_created) in logins {
        login_reports.push(configure_login(&mut tx, o, l, was_created).await?);
    }
    tx.commit().await?;

    Ok(RoleReport {
        owner,
        orchestrator: orchestrator.0,
        worker: worker.0,
        submitter: submitter.0,
        reader: reader.0,
        created,
        logins: login_reports,
        step_queues,
    })
}

/// Revokes what the groups hold on the two schemas and grants exactly their set. Returns the
/// step queues granted to the worker.
#[expect(
    clippy::too_many_lines,
    reason = "the whole grant list of every role in one reviewable place"
)]
async fn grant_privileges(
    tx: &mut PgConnection,
    owner: &str,
    [o, w, s, r]: [&RoleName; 4],
) -> Result<Vec<String>> {
    let (o, w, s, r) = (o.as_str(), w.as_str(), s.as_str(), r.as_str());
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *tx)
        .await?;

    // Start from nothing on both schemas, so a privilege dropped from the set (or granted by
    // hand) does not linger.
    for stmt in [
        "REVOKE ALL ON ALL TABLES IN SCHEMA lineq, pgmq FROM %I, %I, %I, %I",
        "REVOKE ALL ON ALL FUNCTIONS IN SCHEMA lineq, pgmq FROM %I, %I, %I, %I",
        "REVOKE ALL ON ALL SEQUENCES IN SCHEMA lineq, pgmq FROM %I, %I, %I, %I",
        "REVOKE ALL ON SCHEMA lineq, pgmq FROM %I, %I, %I, %I",
        "GRANT USAGE ON SCHEMA lineq, pgmq TO %I, %I, %I, %I",
    ] {
        ddl(tx, stmt, &[o, w, s, r]).await?;
    }
    // Explicit, in case PUBLIC's default CONNECT was revoked.
    ddl(
        tx,
        "GRANT CONNECT ON DATABASE %I TO %I, %I, %I, %I",
        &[&database, o, w, s, r],
    )
    .await?;

    // Orchestrator: all state, all queues, queue creation through lineq.create_queue (never
    // CREATE on a schema whose objects other roles run, nor writes to the queue registry);
    // migrations stay the owner's.
    for stmt in [
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA lineq, pgmq TO %I",
        "REVOKE INSERT, UPDATE, DELETE ON lineq._sqlx_migrations, pgmq.__pgmq_migrations, pgmq.meta FROM %I",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA pgmq TO %I",
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lineq, pgmq TO %I",
    ] {
        ddl(tx, stmt, &[o]).await?;
    }

    // Reader: everything readable, the functions that run with the caller's own privileges
    // (the lineage functions), and the queues' sequences, which `pgmq.metrics()` reads for
    // dashboards (SELECT on a sequence cannot advance it).
    for stmt in [
        "GRANT SELECT ON ALL TABLES IN SCHEMA lineq, pgmq TO %I",
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA pgmq TO %I",
    ] {
        ddl(tx, stmt, &[r]).await?;
    }
    grant_functions(tx, r, &[], true).await?;

    // Worker: the worker protocol's functions, which do the writing and check what a worker
    // may do; the migration check at start and the list of queues; nothing that writes.
    for stmt in [
        "GRANT SELECT ON lineq._sqlx_migrations TO %I",
        "GRANT SELECT ON pgmq.meta TO %I",
    ] {
        ddl(tx, stmt, &[w]).await?;
    }
    grant_functions(tx, w, WORKER_FUNCTIONS, true).await?;

    // Submitter: submit, tag and cancel through the functions that check them; read the
    // executions and their story. (`pgmq.meta`, to say which namespaces exist.)
    for table in SUBMITTER_TABLES {
        ddl(tx, "GRANT SELECT ON lineq.%I TO %I", &[table, s]).await?;
    }
    ddl(tx, "GRANT SELECT ON pgmq.meta TO %I", &[s]).await?;
    grant_functions(tx, s, SUBMITTER_FUNCTIONS, true).await?;

    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT m.queue_name FROM pgmq.meta m
          WHERE m.queue_name LIKE 'lineq\_steps\_%'
            AND to_regclass(format('pgmq.%I', 'q_' || m.queue_name)) IS NOT NULL
            AND to_regclass(format('pgmq.%I', 'a_' || m.queue_name)) IS NOT NULL
          ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut step_queues = Vec::with_capacity(names.len());
    for name in names {
        // Queues lineq did not make (names it would refuse) are not the worker's business.
        if QueueName::new(&name).is_err() {
            tracing::warn!(queue = %name, "skipping a queue with a name lineq would not create");
            continue;
        }
        step_queues.push(name);
    }

    // Objects created later: queues (by this role, or by an orchestrator) and lineq tables (by
    // this role's migrations).
    for creator in [owner, o] {
        // Reconciled like the rest: what is not granted below does not linger. (Per-schema
        // defaults only add to the global ones, so this never takes an owner's own rights.)
        for stmt in [
            "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA lineq, pgmq REVOKE ALL ON TABLES FROM %I, %I, %I, %I",
            "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA lineq, pgmq REVOKE ALL ON SEQUENCES FROM %I, %I, %I, %I",
        ] {
            ddl(tx, stmt, &[creator, o, w, s, r]).await?;
        }
        for (stmt, grantees) in [
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA pgmq GRANT SELECT ON TABLES TO %I",
                &[r][..],
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA pgmq GRANT SELECT ON SEQUENCES TO %I",
                &[r][..],
            ),
        ] {
            for g in grantees {
                ddl(tx, stmt, &[creator, g]).await?;
            }
        }
    }
    for stmt in [
        "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA pgmq GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I",
        "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA pgmq GRANT USAGE, SELECT ON SEQUENCES TO %I",
        "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA lineq GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I",
    ] {
        ddl(tx, stmt, &[owner, o]).await?;
    }
    ddl(
        tx,
        "ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA lineq GRANT SELECT ON TABLES TO %I",
        &[owner, r],
    )
    .await?;
    Ok(step_queues)
}

/// Grants `role` EXECUTE on lineq's `SECURITY DEFINER` functions whose names match one of
/// `patterns`, and, with `invoker`, on every function that runs with the caller's privileges.
async fn grant_functions(
    tx: &mut PgConnection,
    role: &str,
    patterns: &[&str],
    invoker: bool,
) -> Result<()> {
    let functions: Vec<String> = sqlx::query_scalar(
        r"SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.pronamespace = 'lineq'::regnamespace
            AND ((p.prosecdef AND p.proname LIKE ANY ($1)) OR (NOT p.prosecdef AND $2))
          ORDER BY 1",
    )
    .bind(patterns)
    .bind(invoker)
    .fetch_all(&mut *tx)
    .await?;
    for f in functions {
        // A regprocedure prints as a qualified, quoted signature.
        let sql: String = sqlx::query_scalar(
            "SELECT format('GRANT EXECUTE ON FUNCTION %s TO %I', $1::regprocedure, $2::text)",
        )
        .bind(&f)
        .bind(role)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::raw_sql(&sql).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Makes `l` a login role of exactly its group, acting as that group in this database.
async fn configure_login(
    tx: &mut PgConnection,
    o: &RoleOptions,
    l: &LoginRole,
    created: bool,
) -> Result<LoginReport> {
    let name = l.name.as_str();
    let group = o.group(l.kind);
    let (superuser, bypassrls, replication): (bool, bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls, rolreplication FROM pg_roles WHERE rolname = $1",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if superuser || bypassrls || replication {
        return Err(invalid(
            "login_role",
            format!(
                "{name} is a superuser or has BYPASSRLS or REPLICATION; a lineq login role must not"
            ),
        ));
    }
    ddl(tx, "ALTER ROLE %I LOGIN", &[name]).await?;
    let password_set = match &l.password {
        Some(p) => {
            // Only the verifier reaches the server, so the password never appears in its logs
            // (log_statement) or in pg_stat_activity.
            let verifier = scram_sha256_verifier(p);
            // Bound and read back inside the server, never spliced into a statement's text:
            // sqlx logs statements at debug, and the verifier must not reach a log.
            sqlx::query(
                "SELECT set_config('lineq.login_role', $1, true),
                        set_config('lineq.verifier', $2, true)",
            )
            .bind(name)
            .bind(&verifier)
            .execute(&mut *tx)
            .await?;
            sqlx::raw_sql(
                "DO $$ BEGIN
                   EXECUTE format('ALTER ROLE %I PASSWORD %L',
                                  current_setting('lineq.login_role'),
                                  current_setting('lineq.verifier'));
                   PERFORM set_config('lineq.verifier', '', true);
                 END $$",
            )
            .execute(&mut *tx)
            .await?;
            true
        }
        None => false,
    };
    for other in RoleKind::ALL.into_iter().filter(|k| *k != l.kind) {
        let g = o.group(other);
        let member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_auth_members m
                            WHERE m.roleid = to_regrole($1) AND m.member = to_regrole($2))",
        )
        .bind(g.as_str())
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if member {
            ddl(tx, "REVOKE %I FROM %I", &[g.as_str(), name]).await?;
        }
    }
    ddl(tx, "GRANT %I TO %I", &[group.as_str(), name]).await?;
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *tx)
        .await?;
    ddl(
        tx,
        "ALTER ROLE %I IN DATABASE %I SET role = %L",
        &[name, &database, group.as_str()],
    )
    .await?;
    Ok(LoginReport {
        name: name.to_string(),
        group: group.0,
        created,
        password_set,
    })
}

/// Creates `role` with `template` unless it exists; true when this call created it. Roles are
/// shared by every database of the cluster, so a run against another database (not serialised
/// by our advisory lock) may create it at the same moment: that counts as existing.
async fn ensure_role(conn: &mut PgConnection, role: &RoleName, template: &str) -> Result<bool> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(false);
    }
    match ddl(conn, template, &[role.as_str()]).await {
        Ok(()) => Ok(true),
        Err(Error::Database(sqlx::Error::Database(e)))
            if matches!(e.code().as_deref(), Some("42710" | "23505")) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Runs a statement that PostgreSQL's `format()` builds from `template` and `args` (bound
/// parameters), so identifiers are quoted by `%I` and literals by `%L` on the server. Utility
/// statements take no parameters, so this is how they get input safely.
async fn ddl(conn: &mut PgConnection, template: &str, args: &[&str]) -> Result<()> {
    let sql: String = sqlx::query_scalar("SELECT format($1, VARIADIC $2::text[])")
        .bind(template)
        .bind(args)
        .fetch_one(&mut *conn)
        .await?;
    sqlx::raw_sql(&sql).execute(&mut *conn).await?;
    Ok(())
}

fn invalid(field: &'static str, reason: String) -> Error {
    Error::Validation(ValidationError::new(field, reason))
}

/// The SCRAM-SHA-256 verifier of `password` with a fresh random salt, in the form PostgreSQL
/// stores (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`) and accepts in
/// `ALTER ROLE … PASSWORD` as already hashed: `postgres-protocol`'s, which prepares the
/// password with SASLprep as PostgreSQL and its clients do.
pub fn scram_sha256_verifier(password: &Password) -> String {
    postgres_protocol::password::scram_sha_256(password.0.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names() {
        for good in ["lineq_worker", "_x", "a", &"a".repeat(63)] {
            assert!(RoleName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Lineq",
            "9x",
            "pg_x",
            "public",
            "none",
            "current_user",
            "x;drop role postgres",
            "x\"y",
            "x-y",
            "ünï",
            &"a".repeat(64),
        ] {
            assert_eq!(RoleName::new(bad).unwrap_err().field, "role", "{bad}");
        }
    }

    #[test]
    fn prefixes_make_valid_names() {
        let o = RoleOptions::new().prefix("acme_prod").unwrap();
        assert_eq!(o.group(RoleKind::Worker).as_str(), "acme_prod_worker");
        assert_eq!(
            RoleOptions::new().group(RoleKind::Orchestrator).as_str(),
            "lineq_orchestrator"
        );
        assert!(RoleOptions::new().prefix("Bad").is_err());
        assert!(RoleOptions::new().prefix(&"a".repeat(51)).is_err());
        assert!(RoleOptions::new().prefix(&"a".repeat(50)).is_ok());
    }

    #[test]
    fn passwords_are_checked_and_never_printed() {
        assert!(Password::new("short").is_err());
        assert!(Password::new("correct horse battery").is_ok());
        assert!(Password::new("tab\tis a control char").is_err());
        assert!(Password::new("ünïcödé-password").is_err());
        let p = Password::new("correct horse battery").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
    }

    #[test]
    fn scram_verifiers_have_postgres_form_and_a_fresh_salt() {
        // tests/roles.rs checks the verifier against an independent computation and one
        // PostgreSQL made itself.
        let p = Password("pencil".to_string());
        let (a, b) = (scram_sha256_verifier(&p), scram_sha256_verifier(&p));
        assert!(a.starts_with("SCRAM-SHA-256$4096:"), "{a}");
        assert_ne!(a, b, "each verifier has its own salt");
    }
}
