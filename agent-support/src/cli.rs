//! The agents' command line, the same for every agent: `run --config FILE`
//! and `config` (print the defaults).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ConfigError;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// TOML config file; every field has a default.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the default configuration.
    Config,
}

/// What the command line needs of a service's config: one TOML file whose
/// fields all have defaults, checked once loaded.
pub trait AgentConfig: Default + Serialize + DeserializeOwned + Sized {
    /// Checks what serde cannot (ranges, consistency between fields).
    fn validate(&self) -> Result<(), ConfigError>;
    /// The `tracing` filter (`RUST_LOG` overrides it).
    fn log_filter(&self) -> &str;
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = crate::config::load_toml(path)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parses the command line and runs `run` with the loaded config on a
/// tokio runtime, logging to stderr.
pub fn main<C, F, Fut>(name: &'static str, about: &'static str, run: F) -> ExitCode
where
    C: AgentConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let matches = Cli::command()
        .name(name)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Config => match toml::to_string_pretty(&C::default()) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let cfg = match config
                .map(|p| C::load(&p))
                .unwrap_or_else(|| Ok(C::default()))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.log_filter()));
            tracing_subscriber::fmt().with_env_filter(filter).init();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
