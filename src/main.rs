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
    let format = args.global.format;
    if let Err(e) = cli::config::resolve(&mut args, &matches) {
        return report(&e, format);
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
    let result = runtime.block_on(cli::telemetry::run(args));
    // A reader that went away (`lineq list | head`) is not an error; any other failure to
    // write the result is.
    let result = result.and_then(|()| match cli::output::write_error() {
        Some(e) => Err(anyhow::anyhow!("cannot write the result to stdout: {e}")),
        None => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, format),
    }
}

/// Prints the error on stderr (as JSON with `--format json`) and returns its exit code.
fn report(e: &anyhow::Error, format: cli::Format) -> ExitCode {
    let code = cli::exit_code(e);
    eprintln!("{}", cli::output::render_error(e, format, code));
    ExitCode::from(code)
}
