//! lineq's configuration: one TOML file, overridden by environment variables, overridden by
//! command-line flags (the binary applies the flags).
//!
//! ```toml
//! [database]
//! url = "postgres://lineq:secret@db.internal:5432/lineq"
//! read_url = "postgres://lineq:secret@replica.internal:5432/lineq"
//! max_connections = 20
//!
//! [worker]
//! namespace = "media"
//! concurrency = 16
//! commands = { resize = "python3 /opt/steps/resize.py" }
//! pass_env = ["AWS_REGION"]
//!
//! [orchestrator]
//! silent_worker_secs = 30
//!
//! [metrics]
//! addr = "127.0.0.1:9101"
//!
//! [http]
//! header_timeout_secs = 10
//!
//! [log]
//! format = "json"
//! level = "info,lineq_worker=debug"
//! ```
//!
//! Every key has a default, so an empty file (or none) is a valid configuration. Unknown keys
//! are errors, in the file and in the environment: a misspelt `concurency` silently ignored is
//! a fleet running with the wrong settings.
//!
//! The environment: `LINEQ_<SECTION>_<KEY>` (`LINEQ_WORKER_CONCURRENCY=16`), plus the standard
//! `DATABASE_URL`, `LINEQ_READ_DATABASE_URL` (`database.read_url`),
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `RUST_LOG` and `LINEQ_LOG` (both `log.level`), which the `LINEQ_<SECTION>_<KEY>` form beats
//! when both are set. `LINEQ_` variables whose second word is not a
//! section (`LINEQ_NODE_NAME`, `LINEQ_JAEGER_URL`, the command handlers' `LINEQ_STEP`, ...) are
//! not configuration and are left alone.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The variable that names the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "LINEQ_CONFIG";

/// The effective configuration of a lineq process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How to reach PostgreSQL.
    pub database: DatabaseSection,
    /// `lineq worker`.
    pub worker: WorkerSection,
    /// `lineq orchestrator` (and `lineq workers`, for when a worker counts as silent).
    pub orchestrator: OrchestratorSection,
    /// `lineq serve`.
    pub api: ApiSection,
    /// Spans over OTLP.
    pub telemetry: TelemetrySection,
    /// The Prometheus and probe endpoint of orchestrators and workers.
    pub metrics: MetricsSection,
    /// Limits of the HTTP listeners (`lineq serve` and the metrics endpoint).
    pub http: HttpSection,
    /// Logs on stderr.
    pub log: LogSection,
}

/// `[database]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// A `postgres://` URL. Secret: shown masked.
    pub url: Option<String>,
    /// A streaming replica of `url` for the read side (get, list, history, lineage, workers,
    /// the console and the REST GETs); unset reads on `url`. Secret: shown masked.
    pub read_url: Option<String>,
    /// Pool size; unset means each command's own (5 for one-shot commands, 10 for `serve`,
    /// about a quarter of the concurrency plus 5 for a worker).
    pub max_connections: Option<u32>,
}

/// `[worker]`: the flags of `lineq worker`, same names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// The namespace to serve.
    pub namespace: String,
    /// How many handlers run at once.
    pub concurrency: usize,
    /// Most messages claimed per read.
    pub batch_size: usize,
    /// Seconds a claimed message stays hidden (extended while it runs).
    pub visibility_timeout_secs: u64,
    /// Seconds running handlers get after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Longest wait between looks at the queue (ms).
    pub poll_interval_ms: u64,
    /// Deliveries without an outcome before a message is dead-lettered as poison.
    pub max_deliveries: i32,
    /// Seconds between the worker's heartbeats in `lineq.workers`. Keep it well under the
    /// orchestrators' `silent_worker_secs`.
    pub heartbeat_secs: u64,
    /// The worker id (default: host-pid-random).
    pub worker_id: Option<String>,
    /// Command handlers: name → program and arguments, split like a shell would.
    pub commands: BTreeMap<String, String>,
    /// Variables of the worker's environment passed on to command handlers, besides `PATH`,
    /// `HOME`, `LANG`, `LC_*`, `TZ` and `TMPDIR` (never `LINEQ_*` or `DATABASE_URL`).
    pub pass_env: Vec<String>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            namespace: "default".to_string(),
            concurrency: 10,
            batch_size: 50,
            visibility_timeout_secs: 30,
            shutdown_grace_secs: 30,
            poll_interval_ms: 1000,
            max_deliveries: 5,
            heartbeat_secs: 5,
            worker_id: None,
            commands: BTreeMap::new(),
            pass_env: Vec::new(),
        }
    }
}

/// `[orchestrator]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorSection {
    /// Results processed per transaction.
    pub batch_size: i32,
    /// Longest wait between looks at the results queue (ms).
    pub poll_interval_ms: u64,
    /// A worker without a heartbeat for this long is silent: its steps are released.
    pub silent_worker_secs: u64,
}

impl Default for OrchestratorSection {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval_ms: 1000,
            silent_worker_secs: 30,
        }
    }
}

/// `[api]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Where `lineq serve` listens.
    pub addr: SocketAddr,
    /// A file whose first line is the API's bearer token (the path is shown; the token never
    /// is).
    pub token_file: Option<PathBuf>,
    /// The bearer token itself, usually from `LINEQ_API_TOKEN`. Secret: shown masked. Give
    /// this or `token_file`, not both.
    pub token: Option<String>,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_file: None,
            token: None,
        }
    }
}

// By hand, so a debug print of the configuration cannot leak the token.
impl fmt::Debug for ApiSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSection")
            .field("addr", &self.addr)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| MASK))
            .finish()
    }
}

/// What a secret is shown as.
pub const MASK: &str = "****";

/// `[telemetry]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// OTLP endpoint; unset exports nothing.
    pub otlp_endpoint: Option<String>,
    /// `service.name` (`OTEL_SERVICE_NAME` still wins, as the SDK reads it).
    pub service_name: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where orchestrators and workers serve `/metrics`, `/healthz` and `/readyz`; unset
    /// serves nothing.
    pub addr: Option<SocketAddr>,
    /// Allows an `addr` other machines can reach (not loopback); the endpoint has no
    /// authentication.
    pub allow_remote: bool,
}

/// `[http]`: the limits of `lineq serve`'s listener and of the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Seconds a client gets to send a request's headers (and a kept-alive connection to start
    /// its next request).
    pub header_timeout_secs: u64,
    /// Seconds from a request's headers to its response, the body included (then 408).
    pub request_timeout_secs: u64,
    /// Seconds a connection may go with no bytes moving while no request is handled.
    pub idle_timeout_secs: u64,
    /// Connections open at once; one more gets 503 and is closed.
    pub max_connections: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 1024,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A filter such as `info` or `info,lineq_worker=debug` (`LINEQ_LOG` and `RUST_LOG` are
    /// read as this key too). Unset: `info` for long-running commands, `warn` for the others.
    pub level: Option<String>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One compact line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What went wrong loading the configuration. Always the user's to fix (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `LINEQ_CONFIG` cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A `LINEQ_<SECTION>_<KEY>` variable names a key the section does not have.
    #[error(
        "unknown configuration variable {var}: [{section}] has no key {key:?} (its keys: {known})"
    )]
    UnknownVariable {
        /// The variable.
        var: String,
        /// The section it names.
        section: &'static str,
        /// The key it names.
        key: String,
        /// The keys the section has.
        known: String,
    },
    /// A variable's value does not fit its key.
    #[error("{var}: {message}")]
    InvalidVariable {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

/// The sections, as named in `LINEQ_<SECTION>_<KEY>`.
pub const SECTIONS: [&str; 8] = [
    "database",
    "orchestrator",
    "worker",
    "api",
    "telemetry",
    "metrics",
    "http",
    "log",
];

/// The keys each section takes from the environment (`worker.commands`, a table, only from the
/// file and `--command`; `worker.pass_env`, a list, only from the file and `--pass-env`).
fn env_keys(section: &str) -> &'static [&'static str] {
    match section {
        "database" => &["url", "read_url", "max_connections"],
        "worker" => &[
            "namespace",
            "concurrency",
            "batch_size",
            "visibility_timeout_secs",
            "shutdown_grace_secs",
            "poll_interval_ms",
            "max_deliveries",
            "heartbeat_secs",
            "worker_id",
        ],
        "orchestrator" => &["batch_size", "poll_interval_ms", "silent_worker_secs"],
        "api" => &["addr", "token_file", "token"],
        "telemetry" => &["otlp_endpoint", "service_name"],
        "metrics" => &["addr", "allow_remote"],
        "http" => &[
            "header_timeout_secs",
            "request_timeout_secs",
            "idle_timeout_secs",
            "max_connections",
        ],
        "log" => &["format", "level"],
        _ => &[],
    }
}

impl Config {
    /// Reads `path` (every key optional). `None` gives the defaults.
    pub fn from_file(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error is the parser's message (line, column, key).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// The file (`explicit`, else `LINEQ_CONFIG` from `env`), then the environment over it.
    /// `env` is the process environment in production, a fixed list in tests.
    pub fn load(
        explicit: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let from_env = env
            .iter()
            .find(|(k, v)| k == CONFIG_ENV && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v));
        let path = explicit.map(Path::to_path_buf).or(from_env);
        let mut config = Self::from_file(path.as_deref())?;
        config.apply_env(env)?;
        Ok(config)
    }

    /// Applies `LINEQ_<SECTION>_<KEY>` and the standard variables. The `LINEQ_` form wins over
    /// the standard one, whatever the order the variables come in.
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut vars: Vec<(String, String)> = env.into_iter().collect();
        // Standard names first, so the specific LINEQ_ names are applied over them; the traces
        // endpoint over the generic one, as the OpenTelemetry SDK ranks them.
        let rank = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" | "RUST_LOG" => 0,
            "DATABASE_URL"
            | "LINEQ_READ_DATABASE_URL"
            | "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            | "LINEQ_LOG" => 1,
            _ => 2,
        };
        vars.sort_by_key(|(k, _)| rank(k));
        for (var, value) in vars {
            let (section, key) = match var.as_str() {
                "DATABASE_URL" => ("database", "url".to_string()),
                "LINEQ_READ_DATABASE_URL" => ("database", "read_url".to_string()),
                "RUST_LOG" | "LINEQ_LOG" => ("log", "level".to_string()),
                "OTEL_EXPORTER_OTLP_ENDPOINT" | "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => {
                    ("telemetry", "otlp_endpoint".to_string())
                }
                _ => {
                    let Some(rest) = var.strip_prefix("LINEQ_") else {
                        continue;
                    };
                    let Some((section, key)) = SECTIONS.iter().find_map(|s| {
                        let key = rest
                            .strip_prefix(&s.to_ascii_uppercase())?
                            .strip_prefix('_')?;
                        Some((*s, key.to_ascii_lowercase()))
                    }) else {
                        continue; // not configuration (LINEQ_NODE_NAME, LINEQ_STEP, ...)
                    };
                    (section, key)
                }
            };
            self.set(section, &key, &value).map_err(|e| match e {
                SetError::UnknownKey => ConfigError::UnknownVariable {
                    var: var.clone(),
                    section,
                    key: key.clone(),
                    known: env_keys(section).join(", "),
                },
                SetError::Invalid(message) => ConfigError::InvalidVariable {
                    var: var.clone(),
                    message,
                },
            })?;
        }
        Ok(())
    }

    /// Sets one key from its text form. An empty value unsets an optional key.
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per key of every section: the table of what each key takes"
    )]
    fn set(&mut self, section: &str, key: &str, value: &str) -> Result<(), SetError> {
        fn num<T: std::str::FromStr>(v: &str) -> Result<T, SetError>
        where
            T::Err: fmt::Display,
        {
            v.trim()
                .parse()
                .map_err(|e| SetError::Invalid(format!("{v:?} is not a valid number: {e}")))
        }
        fn opt(v: &str) -> Option<String> {
            (!v.is_empty()).then(|| v.to_string())
        }
        fn addr(v: &str) -> Result<SocketAddr, SetError> {
            v.trim().parse().map_err(|e| {
                SetError::Invalid(format!("{v:?} is not an address like 127.0.0.1:9101: {e}"))
            })
        }
        let (d, w, o) = (&mut self.database, &mut self.worker, &mut self.orchestrator);
        match (section, key) {
            ("database", "url") => d.url = opt(value),
            ("database", "read_url") => d.read_url = opt(value),
            ("database", "max_connections") => {
                d.max_connections = if value.is_empty() {
                    None
                } else {
                    Some(num(value)?)
                }
            }
            ("worker", "namespace") => w.namespace = value.to_string(),
            ("worker", "concurrency") => w.concurrency = num(value)?,
            ("worker", "batch_size") => w.batch_size = num(value)?,
            ("worker", "visibility_timeout_secs") => w.visibility_timeout_secs = num(value)?,
            ("worker", "shutdown_grace_secs") => w.shutdown_grace_secs = num(value)?,
            ("worker", "poll_interval_ms") => w.poll_interval_ms = num(value)?,
            ("worker", "max_deliveries") => w.max_deliveries = num(value)?,
            ("worker", "heartbeat_secs") => w.heartbeat_secs = num(value)?,
            ("worker", "worker_id") => w.worker_id = opt(value),
            ("orchestrator", "batch_size") => o.batch_size = num(value)?,
            ("orchestrator", "poll_interval_ms") => o.poll_interval_ms = num(value)?,
            ("orchestrator", "silent_worker_secs") => o.silent_worker_secs = num(value)?,
            ("api", "addr") => self.api.addr = addr(value)?,
            ("api", "token_file") => self.api.token_file = opt(value).map(PathBuf::from),
            ("api", "token") => self.api.token = opt(value),
            ("telemetry", "otlp_endpoint") => self.telemetry.otlp_endpoint = opt(value),
            ("telemetry", "service_name") => self.telemetry.service_name = opt(value),
            ("metrics", "addr") => {
                self.metrics.addr = if value.is_empty() {
                    None
                } else {
                    Some(addr(value)?)
                }
            }
            ("metrics", "allow_remote") => {
                self.metrics.allow_remote = match value.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" | "" => false,
                    _ => {
                        return Err(SetError::Invalid(format!(
                            "{value:?} is not a boolean: true or false"
                        )));
                    }
                }
            }
            ("http", "header_timeout_secs") => self.http.header_timeout_secs = num(value)?,
            ("http", "request_timeout_secs") => self.http.request_timeout_secs = num(value)?,
            ("http", "idle_timeout_secs") => self.http.idle_timeout_secs = num(value)?,
            ("http", "max_connections") => self.http.max_connections = num(value)?,
            ("log", "format") => {
                self.log.format = match value.trim().to_ascii_lowercase().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => {
                        return Err(SetError::Invalid(format!(
                            "{value:?} is not a log format: text or json"
                        )));
                    }
                }
            }
            ("log", "level") => self.log.level = opt(value),
            _ => return Err(SetError::UnknownKey),
        }
        Ok(())
    }

    /// A copy safe to print: the database passwords (primary and read replica), the API token (and any password in the
    /// OTLP endpoint) replaced by `****`.
    pub fn masked(&self) -> Self {
        let mut c = self.clone();
        c.api.token = c.api.token.as_ref().map(|_| MASK.to_string());
        c.database.url = c.database.url.as_deref().map(mask_dsn);
        c.database.read_url = c.database.read_url.as_deref().map(mask_dsn);
        c.telemetry.otlp_endpoint = c.telemetry.otlp_endpoint.as_deref().map(mask_url);
        c
    }

    /// As TOML, loadable as a config file.
    pub fn to_toml(&self) -> String {
        // Every field serializes to a TOML type (no bare None at the top, no mixed arrays).
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render as TOML: {e}\n"))
    }
}

enum SetError {
    UnknownKey,
    Invalid(String),
}

/// A database connection string with its password masked, in either form libpq takes: a URL
/// (see [`mask_url`]) or `key=value` pairs (`host=db password='a b'` → `host=db password=****`).
pub fn mask_dsn(dsn: &str) -> String {
    if dsn.contains("://") {
        mask_url(dsn)
    } else {
        mask_key_values(dsn)
    }
}

/// `key=value` pairs, as libpq reads them (spaces around `=` allowed, values bare or in single
/// quotes with `\` escapes), with the value of every `password` key replaced by `****`. Text it
/// cannot read as pairs is kept up to there, and the rest masked if it might hold a password.
fn mask_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        out.push_str(key);
        rest = &rest[key_end..];
        let after_ws = rest.trim_start();
        let Some(value) = after_ws.strip_prefix('=') else {
            // Not a pair: nothing more can be read safely; keep what cannot be a secret.
            if !rest.is_empty() {
                out.push_str(MASK);
            }
            return out;
        };
        out.push_str(&rest[..rest.len() - after_ws.len()]);
        out.push('=');
        let value_start = value.trim_start();
        out.push_str(&value[..value.len() - value_start.len()]);
        let (raw, tail) = if value_start.starts_with('\'') {
            let bytes = value_start.as_bytes();
            let mut i = 1;
            let mut end = None;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 2,
                    b'\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => i += 1,
                }
            }
            // An unterminated quote runs to the end.
            let end = end.unwrap_or(value_start.len()).min(value_start.len());
            value_start.split_at(end)
        } else {
            let end = value_start
                .find(char::is_whitespace)
                .unwrap_or(value_start.len());
            value_start.split_at(end)
        };
        if key.eq_ignore_ascii_case("password") {
            out.push_str(MASK);
        } else {
            out.push_str(raw);
        }
        rest = tail;
    }
}

/// `scheme://user:secret@host/db?password=secret` → `scheme://user:****@host/db?password=****`.
/// Text that is not a URL with credentials comes back unchanged.
pub fn mask_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                let start = scheme_end + 3 + colon + 1;
                let end = scheme_end + 3 + at;
                out = format!("{}****{}", &url[..start], &url[end..]);
            }
        }
    }
    // libpq also takes the password as a query parameter.
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[worker]\nconcurency = 3\n").unwrap_err();
        assert!(e.contains("concurency"), "{e}");
        let e = Config::from_toml("[wrker]\n").unwrap_err();
        assert!(e.contains("wrker"), "{e}");
        let e = Config::default()
            .apply_env(env(&[("LINEQ_WORKER_CONCURENCY", "3")]))
            .unwrap_err();
        assert!(e.to_string().contains("LINEQ_WORKER_CONCURENCY"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_lineq_beats_standard_names() {
        let mut c = Config::from_toml(
            "[worker]\nconcurrency = 3\ncommands = { a = \"echo a\" }\n[database]\nurl = \"postgres://file\"\n",
        )
        .unwrap();
        c.apply_env(env(&[
            ("LINEQ_DATABASE_URL", "postgres://lineq"),
            ("DATABASE_URL", "postgres://standard"),
            ("LINEQ_WORKER_CONCURRENCY", "7"),
            ("LINEQ_NODE_NAME", "not config"),
            ("LINEQ_LOG", "debug"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
        ]))
        .unwrap();
        assert_eq!(c.worker.concurrency, 7);
        assert_eq!(c.worker.commands["a"], "echo a");
        assert_eq!(c.database.url.as_deref(), Some("postgres://lineq"));
        assert_eq!(
            c.telemetry.otlp_endpoint.as_deref(),
            Some("http://traces:4317")
        );
        let e = c
            .apply_env(env(&[("LINEQ_METRICS_ADDR", "nowhere")]))
            .unwrap_err();
        assert!(e.to_string().contains("LINEQ_METRICS_ADDR"), "{e}");
    }

    #[test]
    fn read_url_from_file_env_and_masked() {
        let mut c =
            Config::from_toml("[database]\nread_url = \"postgres://u:file@replica/db\"\n").unwrap();
        assert_eq!(
            c.database.read_url.as_deref(),
            Some("postgres://u:file@replica/db")
        );
        c.apply_env(env(&[(
            "LINEQ_READ_DATABASE_URL",
            "postgres://u:std@r2/db",
        )]))
        .unwrap();
        assert_eq!(
            c.database.read_url.as_deref(),
            Some("postgres://u:std@r2/db")
        );
        // The LINEQ_<SECTION>_<KEY> form beats the short one, in either order.
        c.apply_env(env(&[
            ("LINEQ_DATABASE_READ_URL", "postgres://u:sec@r3/db"),
            ("LINEQ_READ_DATABASE_URL", "postgres://u:std@r2/db"),
        ]))
        .unwrap();
        assert_eq!(
            c.database.read_url.as_deref(),
            Some("postgres://u:sec@r3/db")
        );
        let m = c.masked();
        assert_eq!(
            m.database.read_url.as_deref(),
            Some("postgres://u:****@r3/db")
        );
        assert!(!m.to_toml().contains("sec@"), "{}", m.to_toml());
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://u:p%40ss@h:5432/db?sslmode=disable&password=x"),
            "postgres://u:****@h:5432/db?sslmode=disable&password=****"
        );
        assert_eq!(mask_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            mask_url("postgres:///db?host=/tmp"),
            "postgres:///db?host=/tmp"
        );
    }

    #[test]
    fn masks_key_value_passwords() {
        assert_eq!(
            mask_dsn("host=db user=u password=hunter2 dbname=x"),
            "host=db user=u password=**** dbname=x"
        );
        assert_eq!(
            mask_dsn("host=db password = 'a b\\' c' dbname=x"),
            "host=db password = **** dbname=x"
        );
        assert_eq!(mask_dsn("password='unterminated"), "password=****");
        assert_eq!(mask_dsn("PASSWORD=x"), "PASSWORD=****");
        assert_eq!(mask_dsn("host=/tmp dbname=x"), "host=/tmp dbname=x");
        assert_eq!(mask_dsn("password"), "password");
        assert_eq!(mask_dsn("host=db junk password=x"), "host=db junk****");
        assert_eq!(mask_dsn("postgres://u:p@h/db"), "postgres://u:****@h/db");
    }

    #[test]
    fn renders_as_loadable_toml() {
        let mut c = Config::default();
        c.worker.commands.insert("a".into(), "echo a".into());
        c.metrics.addr = Some("127.0.0.1:9101".parse().unwrap());
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }
}
