//! `hypervisor-agent`: one per compute host. See the crate docs.

use std::process::ExitCode;

fn main() -> ExitCode {
    agent_support::cli::main(
        "hypervisor-agent",
        "Strato hypervisor agent",
        hypervisor_agent::agent::run,
    )
}
