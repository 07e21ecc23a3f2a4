//! Whose fault an error is. An error the user can fix in what they wrote (a flag, a config, a
//! reference that does not resolve, a size too large for the machine) makes the command line
//! exit 2; a fault in the data or a failure of the run, 1. Each error type answers for itself,
//! beside its definition; `kiln`'s `main` asks every type it may meet. This module depends on
//! nothing, so that every other can implement it.

/// An error that may be the user's to fix in what they wrote.
pub trait UserError {
    /// Exit code 2 rather than 1.
    fn is_usage(&self) -> bool;
}
