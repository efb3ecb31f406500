//! The three-target setup shared by `compare` and `clients`: start AgentRegistry on a fresh
//! home and load the real corpus through HTTP publishes, lay out and start nginx with the
//! bytes AgentRegistry then serves, start Verdaccio 6 and load the same corpus through its
//! publish API. Load times are kept: loading is itself a publish measurement.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::corpus::{self, Entry};
use crate::load::{self, LoadReport};
use crate::targets::{self, Server};

/// Options for starting the targets.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct FixtureOpts {
    /// The corpus folder (manifest.tsv, tarballs/, e2e-package.json).
    #[arg(long)]
    pub(crate) corpus_dir: Option<PathBuf>,
    /// The agentregistry binary (default: target/release/agentregistry, built if missing).
    #[arg(long)]
    pub(crate) agentregistry_bin: Option<PathBuf>,
    /// `--cores` for AgentRegistry (default: its own default, half the CPUs).
    #[arg(long)]
    pub(crate) agentregistry_cores: Option<usize>,
    /// Where Verdaccio is installed (kept between runs).
    #[arg(long)]
    pub(crate) tools_dir: Option<PathBuf>,
    /// nginx worker processes.
    #[arg(long, default_value_t = 2)]
    pub(crate) nginx_workers: usize,
    /// Threads (connections) used to load each registry.
    #[arg(long, default_value_t = 8)]
    pub(crate) load_threads: usize,
    /// Pin every server to these CPUs (`taskset -c LIST`); run perf itself under
    /// `taskset -c OTHER` to keep the load generator apart (MEASUREMENTS.md's 1-core rows).
    #[arg(long)]
    pub(crate) server_cpus: Option<String>,
    /// Skip Verdaccio (e.g. when npm cannot install it).
    #[arg(long)]
    pub(crate) no_verdaccio: bool,
}

/// A started, loaded target.
pub(crate) struct Started {
    pub(crate) server: Server,
    pub(crate) token: Option<String>,
    pub(crate) load: Option<LoadReport>,
}

/// All targets of one run, AgentRegistry first.
pub(crate) struct Fixture {
    pub(crate) corpus_dir: PathBuf,
    pub(crate) entries: Vec<Entry>,
    pub(crate) targets: Vec<Started>,
}

const USER: &str = "perfloader";
const PASSWORD: &str = "perf-loader-pass-1";

impl Fixture {
    pub(crate) fn setup(opts: &FixtureOpts) -> Result<Fixture> {
        let corpus_dir = opts
            .corpus_dir
            .clone()
            .unwrap_or_else(corpus::default_corpus_dir);
        let entries = corpus::read_manifest(&corpus_dir)?;
        let bin = targets::agentregistry_binary(opts.agentregistry_bin.as_deref())?;
        let tools = opts
            .tools_dir
            .clone()
            .unwrap_or_else(targets::default_tools_dir);
        if !opts.no_verdaccio {
            // Install before anything runs, so that npm's work is not measured.
            targets::ensure_verdaccio(&tools)?;
        }

        let ar = targets::start_agentregistry(
            &bin,
            opts.agentregistry_cores,
            opts.server_cpus.as_deref(),
        )?;
        eprintln!("agentregistry at {} (pid {})", ar.target.base, ar.pid);
        let token = load::login(&ar.target, USER, PASSWORD)?;
        let report = load::load_real(&ar.target, &token, &entries, opts.load_threads)
            .context("loading agentregistry")?;
        eprintln!("agentregistry load: {report}");
        let mut started = vec![Started {
            server: ar,
            token: Some(token),
            load: Some(report),
        }];

        let port = targets::free_port()?;
        let nginx = targets::start_nginx(
            &started[0].server.target,
            &entries,
            port,
            opts.nginx_workers,
            opts.server_cpus.as_deref(),
        )?;
        targets::check_nginx(&started[0].server.target, &nginx.target, &entries)
            .context("nginx does not serve agentregistry's bytes")?;
        eprintln!("nginx at {} (pid {})", nginx.target.base, nginx.pid);
        started.push(Started {
            server: nginx,
            token: None,
            load: None,
        });

        if !opts.no_verdaccio {
            let port = targets::free_port()?;
            let verdaccio = targets::start_verdaccio(&tools, port, opts.server_cpus.as_deref())?;
            eprintln!(
                "verdaccio at {} (pid {})",
                verdaccio.target.base, verdaccio.pid
            );
            let token = load::login(&verdaccio.target, USER, PASSWORD)?;
            let report = load::load_real(&verdaccio.target, &token, &entries, opts.load_threads)
                .context("loading verdaccio")?;
            eprintln!("verdaccio load: {report}");
            started.push(Started {
                server: verdaccio,
                token: Some(token),
                load: Some(report),
            });
        }
        Ok(Fixture {
            corpus_dir,
            entries,
            targets: started,
        })
    }
}
