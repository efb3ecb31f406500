//! `perf clients`: real cold installs of the corpus tree (`e2e-package.json`, 485 packages)
//! with `npm install` and `bun install` against AgentRegistry, nginx and Verdaccio. Every
//! install gets a fresh project folder, HOME, `.npmrc` and empty cache; target order is
//! rotated per repeat. Prints each time, medians, and the ratios AgentRegistry/nginx and
//! AgentRegistry/Verdaccio of install time (below 1 means AgentRegistry was faster).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::compare::median;
use crate::fixture::{Fixture, FixtureOpts};
use crate::procstat::CpuWindow;
use crate::targets::{self, Kind};

/// `clients` options.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ClientsOpts {
    /// Installs per tool and target.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeats: usize,
    /// Which clients to time.
    #[arg(long, value_delimiter = ',', default_value = "npm,bun")]
    pub(crate) tools: Vec<String>,
    /// Seconds one install may take before it is killed (and counted as failed).
    #[arg(long, default_value_t = 600)]
    pub(crate) install_timeout: u64,
    /// Before each install, `sync` and wait up to this many seconds for a quiet machine.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) quiet_wait: f64,
    /// Busy cores below which the machine counts as quiet.
    #[arg(long, default_value_t = 0.25)]
    pub(crate) quiet_threshold: f64,
    #[command(flatten)]
    pub(crate) fixture: FixtureOpts,
}

struct Sample {
    tool: String,
    target: Kind,
    seconds: f64,
    server_cpu_seconds: f64,
    ok: bool,
    detail: String,
}

fn tool_program(tool: &str) -> Result<PathBuf> {
    match tool {
        "npm" => Ok(PathBuf::from("npm")),
        "bun" => {
            let bun = targets::workspace_root().join(".tools/bin/bun");
            anyhow::ensure!(
                bun.is_file(),
                "{} is missing: run scripts/install-tools.sh",
                bun.display()
            );
            Ok(bun)
        }
        other => anyhow::bail!("unknown client {other:?} (npm or bun)"),
    }
}

fn install_once(
    tool: &str,
    registry_url: &str,
    server_pid: u32,
    package_json: &Path,
    timeout: Duration,
) -> Result<(f64, f64, bool, String)> {
    let scratch = tempfile::Builder::new().prefix("perf-client-").tempdir()?;
    let root = scratch.path();
    let (project, home, cache, tmp) = (
        root.join("project"),
        root.join("home"),
        root.join("cache"),
        root.join("tmp"),
    );
    for d in [&project, &home, &cache, &tmp] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(package_json, project.join("package.json"))?;
    let npmrc = format!(
        "registry={registry_url}/\ncache={}\nupdate-notifier=false\nfund=false\naudit=false\n",
        cache.join("npm").display()
    );
    std::fs::write(home.join(".npmrc"), &npmrc)?;
    std::fs::write(project.join(".npmrc"), &npmrc)?;
    std::fs::write(
        project.join("bunfig.toml"),
        format!(
            "[install]\nregistry = \"{registry_url}/\"\n[install.cache]\ndir = \"{}\"\n",
            cache.join("bun").display()
        ),
    )?;
    let program = tool_program(tool)?;
    let mut cmd = Command::new(&program);
    match tool {
        "npm" => {
            cmd.args(["install", "--no-audit", "--no-fund", "--loglevel=error"]);
        }
        _ => {
            cmd.arg("install");
        }
    }
    cmd.current_dir(&project)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("NPM_CONFIG_USERCONFIG", home.join(".npmrc"))
        .env("XDG_CACHE_HOME", cache.join("xdg"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("BUN_INSTALL_CACHE_DIR", cache.join("bun"))
        .env("BUN_INSTALL", home.join(".bun"))
        .env("DO_NOT_TRACK", "1")
        .env("TMPDIR", &tmp)
        .env("LANG", "C.UTF-8")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(root.join("out.log"))?))
        .stderr(Stdio::from(std::fs::File::create(root.join("err.log"))?));
    let window = CpuWindow::start(Some(server_pid))?;
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = start.elapsed().as_secs_f64();
    let cpu = window.finish()?;
    let installed_bytes = dir_bytes(&project.join("node_modules"));
    let installed = project.join("node_modules/express/package.json").is_file()
        && project
            .join("node_modules/typescript/package.json")
            .is_file();
    let ok = status.is_some_and(|s| s.success()) && installed;
    let detail = if ok {
        String::new()
    } else {
        let err = std::fs::read_to_string(root.join("err.log")).unwrap_or_default();
        let tail: String = err
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("status {status:?}, installed {installed}: {tail}")
    };
    let mut detail = detail;
    if ok {
        detail = format!("node_modules {:.0} MiB", installed_bytes as f64 / 1048576.0);
    }
    Ok((seconds, cpu.server.unwrap_or(0.0) * seconds, ok, detail))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

pub(crate) fn run(opts: &ClientsOpts) -> Result<()> {
    for tool in &opts.tools {
        tool_program(tool)?;
    }
    let fixture = Fixture::setup(&opts.fixture)?;
    let package_json = fixture.corpus_dir.join("e2e-package.json");
    println!("# perf clients\n\n{}", crate::machine_description());
    let mut samples: Vec<Sample> = Vec::new();
    let n = fixture.targets.len();
    for rep in 0..opts.repeats.max(1) {
        for tool in &opts.tools {
            for k in 0..n {
                let t = &fixture.targets[(k + rep) % n];
                // Each install writes a few hundred MiB: flush the previous one's dirty pages
                // and let other tenants' bursts pass, so installs do not pay for each other.
                let _ = Command::new("sync").status();
                crate::procstat::wait_for_quiet(
                    opts.quiet_threshold,
                    Duration::from_secs_f64(opts.quiet_wait),
                )?;
                let (seconds, server_cpu_seconds, ok, detail) = install_once(
                    tool,
                    &t.server.target.base,
                    t.server.pid,
                    &package_json,
                    Duration::from_secs(opts.install_timeout),
                )?;
                eprintln!(
                    "{tool} install against {}: {seconds:.2} s{}",
                    t.server.kind.label(),
                    if ok {
                        format!(" ({detail})")
                    } else {
                        format!(" FAILED: {detail}")
                    }
                );
                samples.push(Sample {
                    tool: tool.clone(),
                    target: t.server.kind,
                    seconds,
                    server_cpu_seconds,
                    ok,
                    detail,
                });
            }
        }
    }
    println!("| client | target | median s | runs (s) | failed | median server CPU-s |");
    println!("|---|---|---|---|---|---|");
    let kinds: Vec<Kind> = fixture.targets.iter().map(|t| t.server.kind).collect();
    let med = |tool: &str, kind: Kind| {
        median(
            samples
                .iter()
                .filter(|s| s.tool == tool && s.target == kind && s.ok)
                .map(|s| s.seconds)
                .collect(),
        )
    };
    for tool in &opts.tools {
        for &kind in &kinds {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| &s.tool == tool && s.target == kind)
                .collect();
            let runs: Vec<String> = mine
                .iter()
                .map(|s| format!("{:.2}{}", s.seconds, if s.ok { "" } else { "!" }))
                .collect();
            println!(
                "| {tool} | {} | {} | {} | {} | {} |",
                kind.label(),
                med(tool, kind).map_or("-".to_owned(), |v| format!("{v:.2}")),
                runs.join(", "),
                mine.iter().filter(|s| !s.ok).count(),
                median(
                    mine.iter()
                        .filter(|s| s.ok)
                        .map(|s| s.server_cpu_seconds)
                        .collect()
                )
                .map_or("-".to_owned(), |v| format!("{v:.2}")),
            );
        }
    }
    println!("\n| client | AR/nginx time (target <= 1.05) | AR/Verdaccio time | verdict |");
    println!("|---|---|---|---|");
    for tool in &opts.tools {
        let ar = med(tool, Kind::AgentRegistry);
        let ng = med(tool, Kind::Nginx);
        let vd = med(tool, Kind::Verdaccio);
        let r_ng = ar.zip(ng).map(|(a, n)| a / n);
        let r_vd = ar.zip(vd).map(|(a, v)| a / v);
        println!(
            "| {tool} | {} | {} | {} |",
            r_ng.map_or("-".to_owned(), |v| format!("{v:.3}")),
            r_vd.map_or("-".to_owned(), |v| format!("{v:.3}")),
            match r_ng {
                Some(r) if r <= 1.05 => "met",
                Some(_) => "**MISSED**",
                None => "not measured",
            }
        );
    }
    for s in samples.iter().filter(|s| !s.ok) {
        println!(
            "- failed: {} against {}: {}",
            s.tool,
            s.target.label(),
            s.detail
        );
    }
    Ok(())
}
