#![forbid(unsafe_code)]
//! The `lineq` command.

mod bench;
mod chaos;
mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

// Every event is a handful of small allocations (JSON payloads, ids as text, span attributes);
// under load glibc's malloc took about a third of this process's CPU, mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Parsed through ArgMatches so the configuration can tell flags given on the command line
    // from defaults (see cli::config).
    let matches = cli::Cli::command().get_matches_from(cli::lineage::graph_format_alias(
        std::env::args_os().collect(),
    ));
    let mut args = match cli::Cli::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if let Err(e) = cli::config::resolve(&mut args, &matches) {
        eprintln!("error: {e:#}");
        return ExitCode::from(cli::exit_code(&e));
    }
    cli::logging::init(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::telemetry::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
