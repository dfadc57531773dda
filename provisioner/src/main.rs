//! `provisioner`: one per rack controller. See the crate docs.

use std::process::ExitCode;

fn main() -> ExitCode {
    agent_support::cli::main::<provisioner::config::Config, _, _>(
        "provisioner",
        "Strato provisioner: network boot and machine lifecycle for one rack",
        provisioner::server::run,
    )
}
