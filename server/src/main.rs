//! The `agentregistry` binary: parse the command line, then run `serve`, `config`, or one of
//! the administration commands (`fsck`, `backup`, `restore`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use server::admin::cli::{CliError, Outcome};
use server::config::{Config, DriverChoice, RawConfig};
use server::config_cli::ConfigCommand;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// AgentRegistry: a local-first, npm-compatible package registry (npm, pnpm, yarn, bun).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry. Point clients at it with `npm config set registry URL`.
    Serve {
        /// Address to listen on (port 0 picks a free port and prints it).
        #[arg(long, env = "AGENTREGISTRY_LISTEN", default_value = server::config::LISTEN_DEFAULT)]
        listen: String,
        /// Data directory [default: ~/.agentregistry].
        #[arg(long, env = "AGENTREGISTRY_HOME")]
        home: Option<PathBuf>,
        /// URL clients reach the registry at, used in tarball URLs [default: http://LISTEN].
        #[arg(long, env = "AGENTREGISTRY_PUBLIC_URL")]
        public_url: Option<String>,
        /// Number of cores (event loops) [default: half the CPUs, at least 1].
        #[arg(long, env = "AGENTREGISTRY_CORES")]
        cores: Option<usize>,
        /// Shards for a new data directory [default: --cores]; fixed once created.
        #[arg(long, env = "AGENTREGISTRY_SHARDS")]
        shards: Option<u32>,
        /// I/O driver: io_uring with automatic epoll fallback, or one of them only.
        #[arg(
            long,
            env = "AGENTREGISTRY_IO_DRIVER",
            value_enum,
            default_value = "auto"
        )]
        io_driver: DriverChoice,
        /// Seconds without a request after which caches are emptied and their memory is
        /// given back to the system [default: 30]; 0 keeps them.
        #[arg(long, env = "AGENTREGISTRY_IDLE_RELEASE_SECS")]
        idle_release_secs: Option<u64>,
    },
    /// Read or change the live config record (`<home>/config.bin`), also while serving.
    Config {
        /// Data directory [default: ~/.agentregistry].
        #[arg(long, env = "AGENTREGISTRY_HOME", global = true)]
        home: Option<PathBuf>,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Verify the data directory (blobs, integrity, served records, redb files, config).
    ///
    /// Exits 0 when no damage is left (orphan blobs and temp files from interrupted writes are
    /// reported, not damage), 1 when damage remains, 2 on usage or I/O errors.
    /// While a server runs on the home, the check runs inside that server.
    Fsck {
        /// Data directory [default: ~/.agentregistry].
        #[arg(long, env = "AGENTREGISTRY_HOME")]
        home: Option<PathBuf>,
        /// Fix what is safe: stale served records, revs, temp files, orphan blobs, a bad
        /// config slot. Never deletes metadata or a referenced blob.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a consistent backup into DIR/backup-<timestamp>, also while the server runs.
    Backup {
        /// Directory that receives the backup.
        dir: PathBuf,
        /// Data directory [default: ~/.agentregistry].
        #[arg(long, env = "AGENTREGISTRY_HOME")]
        home: Option<PathBuf>,
    },
    /// Restore a backup into the data directory (the server must be stopped).
    ///
    /// The restored copy is verified with fsck before it replaces anything.
    Restore {
        /// A backup directory written by `agentregistry backup`.
        backup_dir: PathBuf,
        /// Data directory [default: ~/.agentregistry].
        #[arg(long, env = "AGENTREGISTRY_HOME")]
        home: Option<PathBuf>,
        /// Restore into a non-empty home; its contents are moved aside, not deleted.
        #[arg(long)]
        force: bool,
    },
}

fn default_home() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").ok_or("neither --home nor $HOME is set")?;
    Ok(PathBuf::from(home).join(".agentregistry"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            home,
            public_url,
            cores,
            shards,
            io_driver,
            idle_release_secs,
        } => {
            init_logging();
            let raw = RawConfig {
                listen: Some(listen),
                home,
                public_url,
                cores,
                shards,
                driver: Some(io_driver),
                idle_release_secs,
            };
            let config = match Config::validate(raw) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("agentregistry: {e}");
                    return ExitCode::from(2);
                }
            };
            match server::serve::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agentregistry: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config { home, command } => {
            let result = home
                .map_or_else(default_home, Ok)
                .and_then(|h| server::config_cli::run(&h, command));
            match result {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("agentregistry config: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Fsck { home, repair, json } => admin("fsck", home, |home| {
            server::admin::cli::fsck(home, repair, json)
        }),
        Command::Backup { dir, home } => admin("backup", home, |home| {
            server::admin::cli::backup(home, &dir)
        }),
        Command::Restore {
            backup_dir,
            home,
            force,
        } => admin("restore", home, |home| {
            server::admin::cli::restore(&backup_dir, home, force)
        }),
    }
}

/// Runs an administration command: prints its outcome, exits with its code (2 on errors).
fn admin(
    name: &str,
    home: Option<PathBuf>,
    run: impl FnOnce(&std::path::Path) -> Result<Outcome, CliError>,
) -> ExitCode {
    let home = match home.map_or_else(default_home, Ok) {
        Ok(home) => home,
        Err(e) => {
            eprintln!("agentregistry {name}: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&home) {
        Ok(outcome) => {
            print!("{}", outcome.stdout);
            eprint!("{}", outcome.stderr);
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            eprintln!("agentregistry {name}: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTREGISTRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
