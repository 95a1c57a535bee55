//! `lineq serve`: the REST API, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use sqlx::PgPool;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. The API has no authentication of its own: keep it on loopback, or
    /// put it behind a proxy that authenticates.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
}

pub async fn run(pool: PgPool, a: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(a.addr)
        .await
        .with_context(|| format!("cannot listen on {}", a.addr))?;
    let local = listener.local_addr()?;
    // On stdout so scripts (and tests using port 0) can learn the port.
    println!("listening on http://{local}");
    tracing::info!(addr = %local, "REST API listening");
    lineq::api::serve(listener, pool, stop_signal()).await?;
    tracing::info!("REST API stopped");
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn stop_signal() {
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
