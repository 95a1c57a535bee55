//! A throwaway PostgreSQL cluster started from the machine's own server binaries.
//!
//! `lineq demo` / `lineq bench` fall back to this when `DATABASE_URL` is unset or unreachable,
//! and the integration tests use it when no `DATABASE_URL` is given. The cluster lives in a
//! fresh directory under the system temp dir, listens on a free loopback port with trust auth,
//! and is removed again on [`LocalPostgres::stop`], on drop, or (optionally) by a watchdog
//! process once the current process exits.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How many ports we try before giving up when another process grabs ours first.
const START_ATTEMPTS: u32 = 3;
/// Seconds `pg_ctl` waits for the server to come up (and to go down).
const PG_CTL_TIMEOUT_SECS: &str = "30";
/// How long we wait for the TCP port to accept connections after `pg_ctl` said "ready".
const TCP_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the server log goes into error messages.
const LOG_TAIL_BYTES: u64 = 4096;
/// The OS user the server runs as when we are root (initdb and pg_ctl refuse to run as root).
const PG_OS_USER: &str = "postgres";

/// Options for a throwaway cluster.
#[derive(Debug, Clone, Default)]
pub struct LocalPostgresOptions {
    /// Stop the cluster and delete its directory when the *current process* exits, even if
    /// `LocalPostgres` is never dropped (tests keep it in a `static`). Done by a small watchdog
    /// child process (`sh -c` loop polling `kill -0 <our pid>`), which then runs
    /// `pg_ctl stop -m immediate` and removes the dir.
    pub stop_with_process: bool,
    /// Extra `-c name=value` server settings (e.g. max_connections=200).
    pub settings: Vec<(String, String)>,
    /// Keep the cluster in this directory instead of a throwaway one: created and initialised
    /// when it holds no cluster yet, started again as it is otherwise, and kept on stop and
    /// drop (`lineq dev`). Incompatible with `stop_with_process`, which would delete it.
    pub persistent_dir: Option<PathBuf>,
}

/// Why a throwaway cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    /// No directory with both `initdb` and `pg_ctl` was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; searched: {searched}. \
         Install PostgreSQL (e.g. `apt-get install postgresql`) or set LINEQ_PG_BINDIR"
    )]
    BinariesNotFound {
        /// Every place that was looked at, in order.
        searched: String,
    },
    /// A filesystem or process-spawn operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line, shell-quoted.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr, plus the tail of the server log where relevant.
        output: String,
    },
    /// `pg_ctl` reported the server as started, but its TCP port never accepted connections.
    #[error(
        "PostgreSQL did not accept TCP connections within {waited_ms} ms; server log tail:\n{log}"
    )]
    NotReady {
        /// How long we waited.
        waited_ms: u64,
        /// The tail of the server log.
        log: String,
    },
}

/// A running throwaway PostgreSQL cluster.
///
/// Connect with [`LocalPostgres::url`] as superuser `postgres` (no password). Call
/// [`LocalPostgres::stop`] for an orderly shutdown; dropping it stops the server immediately
/// and deletes its directory.
#[derive(Debug)]
pub struct LocalPostgres {
    /// The temp dir holding everything below; removed on stop.
    root: PathBuf,
    /// The data directory (`root/data`).
    data: PathBuf,
    /// The server log (`root/postgres.log`).
    log: PathBuf,
    /// Where `initdb` and `pg_ctl` live.
    bin_dir: PathBuf,
    /// How to run the server binaries (directly or as the `postgres` user).
    run_as: RunAs,
    /// TCP port on 127.0.0.1; 0 until the server has started.
    port: u16,
    /// Connection URL; empty until the server has started.
    url: String,
    /// The watchdog process, when one was spawned.
    watchdog: Option<std::process::Child>,
    /// Set once `stop` has cleaned up, so `Drop` does nothing.
    stopped: bool,
    /// The directory is kept on stop and drop.
    persistent: bool,
    /// The `-c` settings it was started with (a replica starts with the same ones: a hot
    /// standby refuses to run with, say, fewer `max_connections` than its primary).
    settings: Vec<(String, String)>,
}

impl LocalPostgres {
    /// Initialise and start a fresh cluster.
    ///
    /// Finds binaries in `$LINEQ_PG_BINDIR`, then `pg_config --bindir`, then the highest
    /// `/usr/lib/postgresql/*/bin` that has `initdb`, then `PATH`. When running as root the
    /// server runs as the `postgres` OS user (via `runuser`, or `su` if that is missing).
    pub async fn start(opts: LocalPostgresOptions) -> Result<Self, LocalPostgresError> {
        let bin_dir = find_bin_dir().await?;
        let run_as = RunAs::detect()?;
        let persistent = opts.persistent_dir.is_some();
        let root = match &opts.persistent_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| LocalPostgresError::Io {
                    what: format!("creating {}", dir.display()),
                    source,
                })?;
                std::path::absolute(dir).map_err(|source| LocalPostgresError::Io {
                    what: format!("resolving {}", dir.display()),
                    source,
                })?
            }
            None => create_temp_root()?,
        };
        tracing::debug!(dir = %root.display(), bin_dir = %bin_dir.display(), persistent, "starting local PostgreSQL");

        // Built before anything else can fail so that `Drop` cleans up a half-made cluster.
        let mut pg = LocalPostgres {
            data: root.join("data"),
            log: root.join("postgres.log"),
            root,
            bin_dir,
            run_as,
            port: 0,
            url: String::new(),
            watchdog: None,
            stopped: false,
            persistent,
            settings: opts.settings.clone(),
        };

        if opts.stop_with_process && !persistent {
            // Spawned first so even a crash during initdb leaves nothing behind.
            pg.spawn_watchdog(std::process::id())?;
        }

        if pg.run_as.is_root() {
            // The server user must own the tree; initdb creates `data` with the right mode.
            let chown = Invocation::new(
                "chown",
                [
                    OsString::from("-R"),
                    OsString::from(format!("{PG_OS_USER}:")),
                    pg.root.clone().into_os_string(),
                ],
            );
            run(&chown).await?;
        }

        let initialised = pg.data.join("PG_VERSION").exists();
        if initialised && pg.data.join("postmaster.pid").exists() {
            // Left running by a process that was killed: stop it, then start it as ours.
            let stop = pg.pg_invocation("pg_ctl", pg.immediate_stop_args());
            let _ = run(&stop).await;
        }
        let initdb = pg.pg_invocation(
            "initdb",
            [
                os("-D"),
                pg.data.clone().into_os_string(),
                os("-U"),
                os("postgres"),
                os("-A"),
                os("trust"),
                // Throwaway cluster: skipping the final fsync of initdb saves seconds.
                os("--no-sync"),
                os("-E"),
                os("UTF8"),
                os("--locale=C"),
            ],
        );
        if !initialised {
            run(&initdb).await?;
        }
        pg.allow_replication()?;

        pg.start_server(&opts.settings).await?;
        pg.wait_for_tcp().await?;
        tracing::info!(url = %pg.url, dir = %pg.root.display(), "throwaway PostgreSQL is up");
        Ok(pg)
    }

    /// postgres://postgres@127.0.0.1:{port}/postgres  (superuser `postgres`, trust auth on loopback)
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (inside the temp dir that is removed on stop).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Restarts the server (fast shutdown, then start with the same port and settings), as an
    /// operator's restart or a failover would; connected clients lose their connections.
    pub async fn restart(&self) -> Result<(), LocalPostgresError> {
        let restart = self.pg_invocation(
            "pg_ctl",
            [
                os("restart"),
                os("-D"),
                self.data.clone().into_os_string(),
                os("-l"),
                self.log.clone().into_os_string(),
                os("-m"),
                os("fast"),
                os("-w"),
                os("-t"),
                os(PG_CTL_TIMEOUT_SECS),
            ],
        );
        run(&restart).await.map_err(|e| self.with_log_tail(e))?;
        self.wait_for_tcp().await
    }

    /// Fast shutdown (pg_ctl stop -m fast -w) and remove the directory.
    pub async fn stop(mut self) -> Result<(), LocalPostgresError> {
        self.kill_watchdog();
        let stop = self.pg_invocation(
            "pg_ctl",
            [
                os("stop"),
                os("-D"),
                self.data.clone().into_os_string(),
                os("-m"),
                os("fast"),
                os("-w"),
                os("-t"),
                os(PG_CTL_TIMEOUT_SECS),
            ],
        );
        // On failure `stopped` stays false, so `Drop` still stops immediately and cleans up.
        if let Err(err) = run(&stop).await {
            return Err(self.with_log_tail(err));
        }
        if !self.persistent {
            std::fs::remove_dir_all(&self.root).map_err(|source| LocalPostgresError::Io {
                what: format!("removing {}", self.root.display()),
                source,
            })?;
        }
        self.stopped = true;
        tracing::debug!(dir = %self.root.display(), "throwaway PostgreSQL stopped");
        Ok(())
    }

    /// Starts a streaming replica of this running cluster: `pg_basebackup -R -X stream` into a
    /// directory of its own, then a hot standby on a free port with this cluster's settings.
    /// It is stopped and removed like any cluster (stop, drop, and the watchdog when this one
    /// has one). Its URL takes read-only transactions only; `pg_is_in_recovery()` is true there.
    pub async fn start_replica(&self) -> Result<Self, LocalPostgresError> {
        let root = create_temp_root()?;
        let mut replica = LocalPostgres {
            data: root.join("data"),
            log: root.join("postgres.log"),
            root,
            bin_dir: self.bin_dir.clone(),
            run_as: self.run_as.clone(),
            port: 0,
            url: String::new(),
            watchdog: None,
            stopped: false,
            persistent: false,
            settings: self.settings.clone(),
        };
        if self.watchdog.is_some() {
            replica.spawn_watchdog(std::process::id())?;
        }
        if replica.run_as.is_root() {
            let chown = Invocation::new(
                "chown",
                [
                    OsString::from("-R"),
                    OsString::from(format!("{PG_OS_USER}:")),
                    replica.root.clone().into_os_string(),
                ],
            );
            run(&chown).await?;
        }
        let basebackup = replica.pg_invocation(
            "pg_basebackup",
            [
                os("-D"),
                replica.data.clone().into_os_string(),
                // Writes standby.signal and primary_conninfo: it starts as a streaming replica.
                os("-R"),
                os("-X"),
                os("stream"),
                // A spread checkpoint on an idle cluster can take minutes.
                os("--checkpoint=fast"),
                os("--no-sync"),
                os("-h"),
                os("127.0.0.1"),
                OsString::from(format!("--port={}", self.port)),
                os("-U"),
                os("postgres"),
            ],
        );
        run(&basebackup).await.map_err(|e| self.with_log_tail(e))?;
        let mut settings = self.settings.clone();
        settings.push(("hot_standby".into(), "on".into()));
        replica.start_server(&settings).await?;
        replica.wait_for_tcp().await?;
        tracing::info!(url = %replica.url, primary = %self.url, "throwaway PostgreSQL replica is up");
        Ok(replica)
    }

    /// Makes sure `pg_hba.conf` takes replication connections on loopback (initdb's own file
    /// does, with the `-A trust` we give it; a cluster made otherwise may not).
    fn allow_replication(&self) -> Result<(), LocalPostgresError> {
        let hba = self.data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).map_err(|source| LocalPostgresError::Io {
            what: format!("reading {}", hba.display()),
            source,
        })?;
        let has = |addr: &str| {
            text.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() >= 5
                    && words[0] == "host"
                    && words[1] == "replication"
                    && words[3] == addr
                    && words[4] == "trust"
            })
        };
        let mut missing = String::new();
        for addr in ["127.0.0.1/32", "::1/128"] {
            if !has(addr) {
                missing.push_str(&format!("host replication all {addr} trust\n"));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut text = text;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&missing);
        // Rewritten in place, so the file keeps its owner (the postgres user when we are root).
        std::fs::write(&hba, text).map_err(|source| LocalPostgresError::Io {
            what: format!("writing {}", hba.display()),
            source,
        })
    }

    /// Run `pg_ctl start`, retrying on a fresh port if someone else took ours meanwhile.
    async fn start_server(
        &mut self,
        settings: &[(String, String)],
    ) -> Result<(), LocalPostgresError> {
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            // pg_ctl hands `-o` to `sh -c`, so every value is shell-quoted.
            let mut server_opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                sh_quote(&self.root.to_string_lossy())
            );
            for (name, value) in settings {
                server_opts.push_str(" -c ");
                server_opts.push_str(&sh_quote(&format!("{name}={value}")));
            }
            let start = self.pg_invocation(
                "pg_ctl",
                [
                    os("-D"),
                    self.data.clone().into_os_string(),
                    os("-l"),
                    self.log.clone().into_os_string(),
                    os("-o"),
                    OsString::from(server_opts),
                    os("-w"),
                    os("-t"),
                    os(PG_CTL_TIMEOUT_SECS),
                    os("start"),
                ],
            );
            match run(&start).await {
                Ok(_) => {
                    self.port = port;
                    self.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                    return Ok(());
                }
                Err(err) => {
                    let log = self.log_tail();
                    let port_clash =
                        log.contains("Address already in use") || log.contains("could not bind");
                    if port_clash && attempt < START_ATTEMPTS {
                        tracing::debug!(port, attempt, "port taken, retrying PostgreSQL start");
                        attempt += 1;
                        continue;
                    }
                    return Err(self.with_log_tail(err));
                }
            }
        }
    }

    /// `pg_ctl -w` already waited for "ready"; this also proves the TCP listener is reachable.
    async fn wait_for_tcp(&self) -> Result<(), LocalPostgresError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        loop {
            let reachable = tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            })
            .await
            .unwrap_or(false);
            if reachable {
                return Ok(());
            }
            if started.elapsed() >= TCP_READY_TIMEOUT {
                return Err(LocalPostgresError::NotReady {
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Start a detached `sh` that waits for `pid` to go away, then stops the cluster and
    /// removes its directory. It also quits once the directory is gone (normal stop).
    fn spawn_watchdog(&mut self, pid: u32) -> Result<(), LocalPostgresError> {
        let stop = self.pg_invocation("pg_ctl", self.immediate_stop_args());
        let dir = sh_quote(&self.root.to_string_lossy());
        let script = format!(
            // `sleep 1` only where `sleep` takes no fractions, so the loop never spins.
            "while kill -0 {pid} 2>/dev/null && [ -d {dir} ]; do \
             sleep 0.2 2>/dev/null || sleep 1; done\n\
             if [ -d {dir} ]; then {} >/dev/null 2>&1; rm -rf -- {dir}; fi\n",
            stop.describe()
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Own process group: a Ctrl-C aimed at the test run must not kill the cleanup too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|source| LocalPostgresError::Io {
            what: "spawning the PostgreSQL watchdog (sh)".to_string(),
            source,
        })?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn kill_watchdog(&mut self) {
        if let Some(mut child) = self.watchdog.take() {
            let _ = child.kill();
            // Reap it so it does not linger as a zombie.
            let _ = child.wait();
        }
    }

    fn immediate_stop_args(&self) -> Vec<OsString> {
        vec![
            os("stop"),
            os("-D"),
            self.data.clone().into_os_string(),
            os("-m"),
            os("immediate"),
            os("-w"),
            os("-t"),
            os(PG_CTL_TIMEOUT_SECS),
        ]
    }

    /// A command line for one of the server binaries, run as the right OS user.
    fn pg_invocation(&self, binary: &str, args: impl IntoIterator<Item = OsString>) -> Invocation {
        let program = self.bin_dir.join(binary).into_os_string();
        self.run_as.wrap(program, args.into_iter().collect())
    }

    fn log_tail(&self) -> String {
        read_tail(&self.log, LOG_TAIL_BYTES)
    }

    /// Append the server log tail to a failed command's output: pg_ctl alone only says
    /// "examine the log output".
    fn with_log_tail(&self, err: LocalPostgresError) -> LocalPostgresError {
        match err {
            LocalPostgresError::CommandFailed {
                command,
                status,
                output,
            } => LocalPostgresError::CommandFailed {
                command,
                status,
                output: format!(
                    "{output}\n--- server log tail ({}) ---\n{}",
                    self.log.display(),
                    self.log_tail()
                ),
            },
            other => other,
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.kill_watchdog();
        // Without postmaster.pid no server is running (never started, or already stopped).
        if self.data.join("postmaster.pid").exists() {
            let stop = self.pg_invocation("pg_ctl", self.immediate_stop_args());
            let _ = stop
                .std_command()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if !self.persistent {
            let _ = std::fs::remove_dir_all(&self.root);
        }
        self.stopped = true;
    }
}

/// Whether the server binaries run directly or as the `postgres` OS user.
#[derive(Debug, Clone)]
enum RunAs {
    /// Not root: run the binaries directly.
    Current,
    /// Root: `runuser -u postgres -- <argv>`.
    Runuser(PathBuf),
    /// Root without runuser: `su postgres -s /bin/sh -c '<argv>'`.
    Su(PathBuf),
}

impl RunAs {
    fn detect() -> Result<Self, LocalPostgresError> {
        if !effective_uid_is_root() {
            return Ok(RunAs::Current);
        }
        if let Some(runuser) = find_program("runuser") {
            return Ok(RunAs::Runuser(runuser));
        }
        if let Some(su) = find_program("su") {
            return Ok(RunAs::Su(su));
        }
        Err(LocalPostgresError::BinariesNotFound {
            searched: "runuser and su (needed to run initdb as the postgres user, since we run \
                       as root) in PATH, /usr/sbin, /sbin, /usr/bin, /bin"
                .to_string(),
        })
    }

    fn is_root(&self) -> bool {
        !matches!(self, RunAs::Current)
    }

    fn wrap(&self, program: OsString, args: Vec<OsString>) -> Invocation {
        match self {
            RunAs::Current => Invocation {
                argv: std::iter::once(program).chain(args).collect(),
            },
            RunAs::Runuser(runuser) => {
                let mut argv = vec![
                    runuser.clone().into_os_string(),
                    os("-u"),
                    os(PG_OS_USER),
                    os("--"),
                    program,
                ];
                argv.extend(args);
                Invocation { argv }
            }
            RunAs::Su(su) => {
                let inner = Invocation {
                    argv: std::iter::once(program).chain(args).collect(),
                };
                Invocation {
                    argv: vec![
                        su.clone().into_os_string(),
                        os(PG_OS_USER),
                        os("-s"),
                        os("/bin/sh"),
                        os("-c"),
                        OsString::from(inner.describe()),
                    ],
                }
            }
        }
    }
}

/// One command line; `describe` renders it shell-quoted (used in errors and the watchdog).
#[derive(Debug, Clone)]
struct Invocation {
    argv: Vec<OsString>,
}

impl Invocation {
    fn new(program: &str, args: impl IntoIterator<Item = OsString>) -> Self {
        Invocation {
            argv: std::iter::once(os(program)).chain(args).collect(),
        }
    }

    fn describe(&self) -> String {
        self.argv
            .iter()
            .map(|a| sh_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn program_and_args(&self) -> (&OsStr, &[OsString]) {
        match self.argv.split_first() {
            Some((program, args)) => (program.as_os_str(), args),
            None => (OsStr::new("true"), &[]),
        }
    }

    fn tokio_command(&self) -> tokio::process::Command {
        let (program, args) = self.program_and_args();
        let mut cmd = tokio::process::Command::new(program);
        // "/" is readable by the postgres user, unlike root's usual working directory.
        cmd.args(args).current_dir("/");
        cmd
    }

    fn std_command(&self) -> std::process::Command {
        let (program, args) = self.program_and_args();
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).current_dir("/");
        cmd
    }
}

/// Run to completion; stdout+stderr on success, `CommandFailed` otherwise.
async fn run(inv: &Invocation) -> Result<String, LocalPostgresError> {
    let output = inv
        .tokio_command()
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| LocalPostgresError::Io {
            what: format!("running `{}`", inv.describe()),
            source,
        })?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(LocalPostgresError::CommandFailed {
            command: inv.describe(),
            status: output.status.to_string(),
            output: text,
        })
    }
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

/// Quote for POSIX sh; plain words stay readable.
fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Effective uid 0? Read from /proc (no libc, no unsafe); fall back to `id -u`.
fn effective_uid_is_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // "Uid:\treal\teffective\tsaved\tfs"
        if let Some(euid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
        {
            return euid == "0";
        }
    }
    std::process::Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Look in PATH, then the sbin dirs that a non-login root shell may lack.
fn find_program(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

async fn find_bin_dir() -> Result<PathBuf, LocalPostgresError> {
    let mut searched = Vec::new();

    if let Some(dir) = std::env::var_os("LINEQ_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        tracing::warn!(dir = %dir.display(), "LINEQ_PG_BINDIR has no initdb/pg_ctl; searching elsewhere");
        searched.push(format!("$LINEQ_PG_BINDIR ({})", dir.display()));
    } else {
        searched.push("$LINEQ_PG_BINDIR (unset)".to_string());
    }

    // On Debian the client-only pg_config reports /usr/bin, which has no initdb: checked below.
    match tokio::process::Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(format!("pg_config --bindir ({})", dir.display()));
        }
        Ok(out) => searched.push(format!("pg_config --bindir (exited {})", out.status)),
        Err(_) => searched.push("pg_config --bindir (pg_config not found)".to_string()),
    }

    let packaged = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(packaged)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // Versions like "15" or "9.6"; anything else is not a server install.
                    let version: Option<Vec<u32>> =
                        name.split('.').map(|p| p.parse().ok()).collect();
                    let bin = e.path().join("bin");
                    version
                        .filter(|_| has_server_binaries(&bin))
                        .map(|v| (v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    searched.push(format!("{}/*/bin", packaged.display()));

    // No let-chains: the workspace's rust-version (1.85) predates them.
    if let Some(dir) = find_program("initdb")
        .as_deref()
        .and_then(Path::parent)
        .filter(|dir| has_server_binaries(dir))
    {
        return Ok(dir.to_path_buf());
    }
    searched.push("PATH".to_string());

    Err(LocalPostgresError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

/// A free port right now; the small race with other processes is handled by retrying start.
fn free_port() -> Result<u16, LocalPostgresError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| LocalPostgresError::Io {
            what: "finding a free TCP port on 127.0.0.1".to_string(),
            source,
        })
}

/// Create `lineq-pg-<pid>-<nanos>-<n>` under the temp dir; `create_dir` fails on a clash.
fn create_temp_root() -> Result<PathBuf, LocalPostgresError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let pid = std::process::id();
    let mut last_err = None;
    for _ in 0..10 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("lineq-pg-{pid}-{nanos:09}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(source) => {
                return Err(LocalPostgresError::Io {
                    what: format!("creating {}", dir.display()),
                    source,
                });
            }
        }
    }
    Err(LocalPostgresError::Io {
        what: format!("creating a unique lineq-pg-* dir in {}", base.display()),
        source: last_err.unwrap_or_else(|| std::io::Error::other("name clash")),
    })
}

/// Last `max` bytes of a file, starting at a line boundary; a note if it can't be read.
fn read_tail(path: &Path, max: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let from = len.saturating_sub(max);
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(match (from > 0, text.find('\n')) {
            (true, Some(i)) => text[i + 1..].to_string(),
            _ => text,
        })
    };
    read().unwrap_or_else(|e| format!("(could not read {}: {e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psql(url: &str, sql: &str) -> String {
        let out = std::process::Command::new("psql")
            .args([url, "-Atc", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn tcp_open(port: u16) -> bool {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_millis(500),
        )
        .is_ok()
    }

    /// Poll until `cond` holds or `secs` pass.
    fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cond()
    }

    #[test]
    fn sh_quote_quotes_only_when_needed() {
        assert_eq!(sh_quote("max_connections=200"), "max_connections=200");
        assert_eq!(sh_quote("/tmp/lineq-pg-1"), "/tmp/lineq-pg-1");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[tokio::test]
    async fn runs_as_postgres_via_runuser_and_su_when_root() {
        if !effective_uid_is_root() {
            return;
        }
        let wrappers = [
            RunAs::Runuser(find_program("runuser").unwrap()),
            RunAs::Su(find_program("su").unwrap()),
        ];
        for run_as in wrappers {
            let who = run_as.wrap(os("id"), vec![os("-un")]);
            assert_eq!(run(&who).await.unwrap().trim(), "postgres", "{run_as:?}");
            // Arguments survive the extra shell layer of `su -c` intact.
            let echo = run_as.wrap(os("printf"), vec![os("%s|"), os("it's a b"), os("$HOME")]);
            assert_eq!(run(&echo).await.unwrap(), "it's a b|$HOME|", "{run_as:?}");
        }
    }

    #[tokio::test]
    async fn finds_server_binaries() {
        let dir = find_bin_dir().await.unwrap();
        assert!(dir.join("initdb").is_file(), "{}", dir.display());
    }

    #[tokio::test]
    async fn start_connect_stop_removes_dir() {
        let pg = LocalPostgres::start(LocalPostgresOptions {
            stop_with_process: false,
            settings: vec![("max_connections".into(), "42".into())],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            pg.url(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
        );
        assert!(pg.data_dir().join("PG_VERSION").is_file());
        assert_eq!(psql(pg.url(), "select 1"), "1");
        assert_eq!(psql(pg.url(), "show max_connections"), "42");
        // Durability defaults stay on unless a caller asks otherwise.
        assert_eq!(psql(pg.url(), "show fsync"), "on");
        assert_eq!(psql(pg.url(), "show synchronous_commit"), "on");

        let root = pg.root.clone();
        let port = pg.port();
        pg.stop().await.unwrap();
        assert!(!root.exists(), "{} still exists", root.display());
        assert!(!tcp_open(port), "server still listening on {port}");
    }

    #[tokio::test]
    async fn a_replica_streams_what_the_primary_writes() {
        let primary = LocalPostgres::start(LocalPostgresOptions {
            settings: vec![("max_connections".into(), "60".into())],
            ..Default::default()
        })
        .await
        .unwrap();
        let replica = primary.start_replica().await.unwrap();
        assert_ne!(replica.port(), primary.port());
        assert_eq!(psql(replica.url(), "select pg_is_in_recovery()"), "t");
        assert_eq!(psql(primary.url(), "select pg_is_in_recovery()"), "f");
        assert_eq!(psql(replica.url(), "show max_connections"), "60");
        psql(
            primary.url(),
            "create table t (v text); insert into t values ('from the primary')",
        );
        assert!(
            eventually(30, || {
                let out = std::process::Command::new("psql")
                    .args([replica.url(), "-Atc", "select v from t"])
                    .output()
                    .expect("psql runs");
                String::from_utf8_lossy(&out.stdout).trim() == "from the primary"
            }),
            "the row never reached the replica"
        );
        assert_eq!(
            psql(
                primary.url(),
                "select count(*) from pg_stat_replication where state = 'streaming'"
            ),
            "1"
        );
        let (root, port) = (replica.root.clone(), replica.port());
        replica.stop().await.unwrap();
        assert!(!root.exists(), "{} still exists", root.display());
        assert!(!tcp_open(port), "replica still listening on {port}");
        primary.stop().await.unwrap();
    }

    #[tokio::test]
    async fn drop_stops_and_removes_dir() {
        let pg = LocalPostgres::start(LocalPostgresOptions::default())
            .await
            .unwrap();
        let root = pg.root.clone();
        let port = pg.port();
        assert!(tcp_open(port));
        drop(pg);
        assert!(!root.exists(), "{} still exists", root.display());
        assert!(!tcp_open(port), "server still listening on {port}");
    }

    #[tokio::test]
    async fn bad_setting_fails_with_command_and_log() {
        let err = LocalPostgres::start(LocalPostgresOptions {
            stop_with_process: false,
            settings: vec![("no_such_setting".into(), "it's 1".into())],
            ..Default::default()
        })
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, LocalPostgresError::CommandFailed { .. }),
            "{msg}"
        );
        assert!(msg.contains("pg_ctl"), "{msg}");
        assert!(msg.contains("no_such_setting"), "{msg}");
        assert!(msg.contains("server log tail"), "{msg}");
    }

    #[tokio::test]
    async fn watchdog_stops_cluster_when_watched_process_exits() {
        let mut pg = LocalPostgres::start(LocalPostgresOptions::default())
            .await
            .unwrap();
        let root = pg.root.clone();
        let port = pg.port();

        let mut sleeper = std::process::Command::new("sleep")
            .arg("1")
            .spawn()
            .unwrap();
        pg.spawn_watchdog(sleeper.id()).unwrap();
        assert!(tcp_open(port), "cluster should run while the process lives");
        // Reaped, so `kill -0` stops seeing it.
        sleeper.wait().unwrap();

        assert!(
            eventually(20, || !root.exists()),
            "{} not removed",
            root.display()
        );
        assert!(!tcp_open(port), "server still listening on {port}");
        pg.stopped = true;
    }

    const CHILD_ENV: &str = "LINEQ_LOCAL_PG_WATCHDOG_CHILD";
    const CHILD_MARK: &str = "LINEQ_PG_ROOT=";

    /// Runs only inside the child process spawned by the test below: starts a cluster with
    /// `stop_with_process` and exits without stopping it, as a test binary with a `static` does.
    #[tokio::test]
    #[ignore = "helper run as a child process by stop_with_process_cleans_up_after_exit"]
    async fn watchdog_child_helper() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let pg = LocalPostgres::start(LocalPostgresOptions {
            stop_with_process: true,
            settings: Vec::new(),
            ..Default::default()
        })
        .await
        .unwrap();
        println!("{CHILD_MARK}{}\t{}", pg.root.display(), pg.port());
        std::mem::forget(pg);
    }

    #[test]
    fn stop_with_process_cleans_up_after_exit() {
        let exe = std::env::current_exe().unwrap();
        // The test's name is its module path without the crate name, wherever this file is mounted.
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let helper = format!("{module}::watchdog_child_helper");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                helper.as_str(),
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        let line = stdout
            .lines()
            // libtest prints "test <name> ... " on the same line before our output.
            .find_map(|l| l.split_once(CHILD_MARK).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no {CHILD_MARK} line in child output: {stdout}"));
        let (root, port) = line.split_once('\t').unwrap();
        let (root, port) = (PathBuf::from(root), port.parse::<u16>().unwrap());

        assert!(
            eventually(20, || !root.exists()),
            "{} not removed after the child exited",
            root.display()
        );
        assert!(!tcp_open(port), "postmaster still listening on {port}");
    }
}
