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
/// model too large for the machine), 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let usage = e.is::<cmd::Usage>()
        || e.is::<ConfigError>()
        || e.downcast_ref::<RegistryError>().is_some_and(is_reference)
        || e.downcast_ref::<TrainError>()
            .is_some_and(TrainError::is_config)
        || matches!(e.downcast_ref::<ExportError>(), Some(ExportError::Registry(r)) if is_reference(r))
        || e.downcast_ref::<kiln_trainer::select::SelectError>()
            .is_some_and(kiln_trainer::select::SelectError::is_input)
        || e.downcast_ref::<ExplainError>()
            .is_some_and(ExplainError::is_input)
        || e.downcast_ref::<EvalError>().is_some_and(|e| {
            matches!(
                e,
                EvalError::LanguageModel { .. }
                    | EvalError::NotLanguageModel { .. }
                    | EvalError::EmptyPrompt
                    | EvalError::Prompt(_)
            )
        });
    if usage { 2 } else { 1 }
}

fn is_reference(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Name(_) | RegistryError::NotFound { .. })
}

/// `error: ` lines on stderr, in one write: ranks of a job share one terminal, and their lines
/// must not interleave.
pub fn print_error(prefix: &str, message: &str) {
    use std::io::Write;
    let text: String = message
        .lines()
        .map(|l| format!("error: {prefix}{l}\n"))
        .collect();
    let _ = std::io::stderr().write_all(text.as_bytes());
}
