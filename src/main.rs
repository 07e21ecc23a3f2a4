//! The `kiln` command: parses arguments, dispatches to a command (`cmd/`), maps errors to exit
//! codes.
//!
//! Exit codes: 0 success; 1 a data or runtime failure; 2 a usage or config error;
//! 130 training interrupted (Ctrl-C, SIGUSR1) after saving a checkpoint.

mod cli;
mod cmd;
mod signals;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: it reuses freed buffers where glibc unmapped and
/// re-faulted them every training step (see Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use kiln_trainer::config::ConfigError;
use kiln_trainer::error::TrainError;
use kiln_trainer::eval::EvalError;
use kiln_trainer::explain::ExplainError;
use kiln_trainer::export::run::ExportError;
use kiln_trainer::registry::RegistryError;
use kiln_trainer::select::SelectError;
use kiln_trainer::usage::UserError;

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`kiln runs list | head`) instead of failing to print.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    signals::quiet_headless_vulkan();
    signals::stage_on_host();
    let cli = cli::Cli::parse();
    match cmd::dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            print_error("", &e.to_string());
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2 for what the user wrote (a flag, a config, a name or reference that does not resolve, a
/// model too large for the machine), 1 for everything else: each error type says which it is
/// ([`UserError`]).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    fn usage<E: UserError + std::fmt::Display + std::fmt::Debug + Send + Sync + 'static>(
        e: &anyhow::Error,
    ) -> bool {
        e.downcast_ref::<E>().is_some_and(E::is_usage)
    }
    let user = e.is::<cmd::Usage>()
        || usage::<ConfigError>(e)
        || usage::<RegistryError>(e)
        || usage::<TrainError>(e)
        || usage::<kiln_trainer::data::DataError>(e)
        || usage::<ExportError>(e)
        || usage::<SelectError>(e)
        || usage::<ExplainError>(e)
        || usage::<EvalError>(e)
        || usage::<kiln_trainer::serve::ServeError>(e);
    if user { 2 } else { 1 }
}

/// `error: ` lines on stderr, in one write: ranks of a job share one terminal, and their lines
/// must not interleave. A message's own line breaks separate its lines (a config's problems);
/// names in messages have theirs escaped where the message is made (`kiln_trainer::shown`),
/// and any other control character left is escaped here, so that nothing a file name holds
/// can move the terminal's cursor or colour the output.
pub fn print_error(prefix: &str, message: &str) {
    use std::io::Write;
    let text: String = message
        .lines()
        .map(|l| format!("error: {prefix}{}\n", kiln_trainer::shown::name(l)))
        .collect();
    let _ = std::io::stderr().write_all(text.as_bytes());
}
