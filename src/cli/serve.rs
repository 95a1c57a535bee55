//! `lineq serve`: the REST API, the web console at `/` and `/metrics`, until SIGTERM or Ctrl-C.

use super::output::outln;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use lineq_api::pools::Pools;
use lineq_api::rest::auth::ApiToken;
use lineq_core::validation::ValidationError;

use super::GlobalArgs;

/// The variable holding the API token when no `--token-file` is given.
pub const TOKEN_ENV: &str = "LINEQ_API_TOKEN";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback (127.0.0.0/8, ::1) requires a token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Require `Authorization: Bearer <token>` on every route but /healthz, the token being the
    /// first line of this file (16 to 4096 visible ASCII characters). Without it, the
    /// LINEQ_API_TOKEN variable is used; give one or the other.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Jaeger's UI, for the console's "open in Jaeger" links (none: no link).
    #[arg(long, env = "LINEQ_JAEGER_URL", value_name = "URL")]
    pub jaeger_url: Option<String>,
    #[command(flatten)]
    pub http: super::http::HttpArgs,
}

/// The whole server's routes: the REST API, the console and `/metrics`.
pub fn app(
    pools: lineq_api::pools::Pools,
    token: Option<ApiToken>,
    jaeger_url: Option<String>,
) -> anyhow::Result<axum::Router> {
    let metrics =
        lineq_api::probes::install_recorder().context("cannot install the metrics recorder")?;
    let console = lineq_api::console::ConsoleOptions {
        jaeger_url: jaeger_url.filter(|u| !u.trim().is_empty()),
        ..Default::default()
    };
    Ok(lineq_api::rest::app(
        pools,
        token,
        Some(console),
        Some(metrics),
    ))
}

pub async fn run(g: &GlobalArgs, a: ServeArgs) -> anyhow::Result<()> {
    // Configuration is checked before anything connects, so a refusal costs nothing.
    // LINEQ_API_TOKEN (or api.token in the config file), resolved by cli::config.
    let env_token = g.effective.api.token.clone().filter(|t| !t.is_empty());
    let token = load_token(a.token_file.as_deref(), env_token)?;
    refuse_open_network(a.addr, token.is_some())?;
    let limits = a.http.limits()?;
    let pools = connect_pools(g).await?;
    let listener = tokio::net::TcpListener::bind(a.addr)
        .await
        .with_context(|| format!("cannot listen on {}", a.addr))?;
    let local = listener.local_addr()?;
    // On stdout so scripts (and tests using port 0) can learn the port.
    outln!("listening on http://{local}");
    let auth = if token.is_some() {
        "bearer token"
    } else {
        "none (loopback only)"
    };
    tracing::info!(addr = %local, auth, "REST API listening");
    let app = app(pools, token, a.jaeger_url)?;
    outln!("console at http://{local}/");
    lineq_api::rest::serve(listener, app, limits, stop_signal()).await?;
    tracing::info!("REST API stopped");
    Ok(())
}

/// The primary's pool for writes, and the replica's for the reads when `--read-database-url`
/// is given. Past the start-up check, the primary's pool connects on first use: a server that
/// only answers reads keeps no connection to it (but for a read by id the replica has not
/// replayed yet).
async fn connect_pools(g: &GlobalArgs) -> anyhow::Result<Pools> {
    let primary = super::connect_sized(g, 10).await?;
    let Some(url) = g.read_database_url.as_deref() else {
        return Ok(Pools::primary(primary));
    };
    let replica = lineq::DatabaseConfig::new(url)
        .max_connections(g.effective.database.max_connections.unwrap_or(10))
        .application_name(lineq_read::pool::READ_APPLICATION_NAME);
    let replica = super::open(&replica).await?;
    super::require_schema(&replica)
        .await
        .context("the read replica (--read-database-url)")?;
    Ok(Pools::with_replica(primary, replica))
}

/// The token from `--token-file` or the environment; an error when both are given (one of them
/// would be silently ignored) or when it breaks the token rules. Its value never appears in an
/// error.
fn load_token(file: Option<&Path>, env: Option<String>) -> anyhow::Result<Option<ApiToken>> {
    let text = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                "token_file",
                format!(
                    "both a token file (--token-file, api.token_file) and a token ({TOKEN_ENV}, api.token) are set; give the token one way"
                ),
            )
            .into());
        }
        (Some(path), None) => {
            warn_if_readable_by_others(path);
            let text = std::fs::read_to_string(path).map_err(|e| {
                ValidationError::new("token_file", format!("cannot read {}: {e}", path.display()))
            })?;
            text.lines().next().unwrap_or_default().trim().to_string()
        }
        (None, Some(env)) => env.trim().to_string(),
        (None, None) => return Ok(None),
    };
    Ok(Some(ApiToken::new(&text)?))
}

/// Refuses an address other machines can reach when no token is configured.
fn refuse_open_network(addr: SocketAddr, has_token: bool) -> Result<(), ValidationError> {
    if has_token || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(ValidationError::new(
        "addr",
        format!(
            "refusing to serve on {addr} without a token: anyone who can reach it could submit and cancel executions. \
             Set {TOKEN_ENV} or --token-file, or listen on 127.0.0.1"
        ),
    ))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(),
                "the token file can be read by other users; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Completes on SIGTERM or Ctrl-C.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_allowed_without_a_token_and_nothing_else_is() {
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.2:1",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                refuse_open_network(ok.parse().unwrap(), false).is_ok(),
                "{ok}"
            );
        }
        for open in [
            "0.0.0.0:8080",
            "[::]:8080",
            "10.0.0.5:8080",
            "[::ffff:10.0.0.5]:80",
        ] {
            let addr: SocketAddr = open.parse().unwrap();
            assert_eq!(refuse_open_network(addr, false).unwrap_err().field, "addr");
            assert!(refuse_open_network(addr, true).is_ok());
        }
    }

    #[test]
    fn tokens_come_one_way_and_never_show_in_errors() {
        let secret = "s3cr3t-s3cr3t-s3cr3t".to_string();
        assert!(load_token(None, None).unwrap().is_none());
        assert!(load_token(None, Some(secret.clone())).unwrap().is_some());
        let both = load_token(Some(Path::new("/nonexistent")), Some(secret.clone())).unwrap_err();
        assert!(!both.to_string().contains(&secret));
        let short = load_token(None, Some("shorty".into())).unwrap_err();
        assert!(!short.to_string().contains("shorty"), "{short}");
    }
}
