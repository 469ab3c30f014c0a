//! The `egress-agent` command (DESIGN.md §9).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `exec` re-executes this binary as the command's sandbox init: never a clap subcommand
    // (it is not for people, and not in --help).
    if let Some(code) = egress_agent::sandbox::init::dispatch() {
        return code;
    }
    // Invoked as `egress-agent-runc[.PROFILE]` (a runtime handler's BinaryName): the runtime
    // wrapper, with the caller's runc arguments as they are.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match egress_agent::oci::wrapper::as_wrapper(&argv) {
        Some(args) => egress_agent::cli::Cli::parse_from(args),
        None => egress_agent::cli::Cli::parse(),
    };
    egress_agent::cli::init_logging(&cli);
    // Two descriptors per intercepted connection: use every one we may.
    let _ = egress_agent::sys::raise_nofile();
    match egress_agent::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, then exit 2: bad arguments, files or state, nothing half-applied.
            eprintln!("egress-agent: {}", egress_agent::report::one_line(&e));
            ExitCode::from(2)
        }
    }
}
