//! `stack-manager`: serve the API, initialize a new installation, print the
//! OpenAPI document or the default configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use clap::{Parser, Subcommand};
use stack_manager::config::Config;
use stack_manager::state::AppState;

#[derive(Parser)]
#[command(
    name = "stack-manager",
    version,
    about = "Strato stack manager: API, metadata store, scheduler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public and internal APIs.
    Serve {
        /// TOML config file (see stack-manager.toml); defaults apply without one.
        #[arg(long, env = "STRATO_STACK_MANAGER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create the first admin user and project and print the admin token.
    Init {
        #[arg(long, env = "STRATO_STACK_MANAGER_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides `state_dir` of the config.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long, default_value = "admin")]
        admin: String,
        #[arg(long, default_value = "admin")]
        project: String,
        /// Print one JSON line `{"user","project","token"}` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Recompute every derived figure (quota usage, host allocations) from
    /// the rows themselves and check the relations that must hold
    /// (addresses and attachments of live instances). Read-only, safe
    /// beside running replicas. Exits 1 when it finds drift.
    Check {
        #[arg(long, env = "STRATO_STACK_MANAGER_CONFIG")]
        config: Option<PathBuf>,
        /// Overrides `state_dir` of the config.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the OpenAPI 3 document.
    Openapi,
    /// Print the default configuration as TOML.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config at `path` (defaults without one), its `state_dir` replaced
/// by `state_dir` when given.
fn load_with_state_dir(
    path: Option<&std::path::Path>,
    state_dir: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if let Some(dir) = state_dir {
        config.state_dir = dir;
    }
    Ok(config)
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            init_tracing(&config.log);
            let state = AppState::start(config).await?;
            let running = stack_manager::server::start(state).await?;
            println!(
                "stack manager: API on http://{} , agents on http://{}",
                running.public, running.internal
            );
            running.handle.await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            config,
            state_dir,
            admin,
            project,
            json,
        } => {
            let config = load_with_state_dir(config.as_deref(), state_dir)?;
            init_tracing("warn");
            let token_file = config.state_dir.join("admin.token");
            let state = AppState::start(config).await?;
            let init = stack_manager::server::init(&state, &admin, &project).await;
            // Its leases go at once: a replica started next takes them now.
            state.stop().await;
            match init {
                Ok(b) => {
                    write_secret(&token_file, &b.token)?;
                    if json {
                        println!("{}", serde_json::to_string(&b)?);
                    } else {
                        println!("admin user `{}` in project `{}`", b.user, b.project);
                        println!(
                            "token (shown once, also in {}): {}",
                            token_file.display(),
                            b.token
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(stack_manager::server::InitError::AlreadyInitialized) => {
                    eprintln!(
                        "error: {}",
                        stack_manager::server::InitError::AlreadyInitialized
                    );
                    Ok(ExitCode::from(3))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Check {
            config,
            state_dir,
            json,
        } => {
            let config = load_with_state_dir(config.as_deref(), state_dir)?;
            init_tracing("warn");
            let db = stack_manager::db::Db::connect_read_only(&config.database_url()).await?;
            let report = stack_manager::store::Store::new(db)
                .consistency_check()
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for c in &report.checks {
                    println!(
                        "{:<18} {:>8} rows  {:>4} drift  {}",
                        c.name, c.rows, c.drift, c.description
                    );
                }
                for d in &report.drift {
                    println!("drift: {}", d.message);
                }
                println!(
                    "{}",
                    if report.consistent {
                        "consistent: no drift"
                    } else {
                        "INCONSISTENT: see the drift above"
                    }
                );
            }
            Ok(if report.consistent {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Openapi => {
            print!("{}", stack_manager::openapi::document_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&Config::default())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    // On PostgreSQL nothing else creates the state directory.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(())
}
