//! `storage-agent`: one per storage node. See the crate docs.

use std::process::ExitCode;

fn main() -> ExitCode {
    agent_support::cli::main(
        "storage-agent",
        "Strato storage agent",
        storage_agent::agent::run,
    )
}
