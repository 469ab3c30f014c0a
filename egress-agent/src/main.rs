//! The `egress-agent` command (DESIGN.md §9).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `exec` re-executes this binary as the command's sandbox init: never a clap subcommand
    // (it is not for people, and not in --help).
    if let Some(code) = egress_agent::sandbox::init::dispatch() {
        return code;
    }
    let cli = egress_agent::cli::Cli::parse();
    egress_agent::cli::init_logging(&cli);
    // Two descriptors per intercepted connection: use every one we may.
    let _ = egress_agent::sys::raise_nofile();
    match egress_agent::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, then exit 2: bad arguments, files or state, nothing half-applied.
            eprintln!("egress-agent: {}", egress_agent::cli::one_line(&e));
            ExitCode::from(2)
        }
    }
}
