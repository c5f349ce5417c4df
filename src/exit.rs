//! The process's exit codes, shared by every subcommand: the daemon's edge (`cli`) and the
//! simulator (`sim::cmd`) both end with them, and neither should reach the other for them.

/// Invalid config, policy or input file.
pub const EXIT_INVALID: i32 = 1;
/// Wrong use of the command line.
pub const EXIT_USAGE: i32 = 2;
/// A failure while running.
pub const EXIT_RUNTIME: i32 = 3;
