//! `perf clients`: real cold installs with `npm install`, `pnpm install` and `bun install`
//! against AgentRegistry, nginx (serving the same bytes) and Verdaccio. Every install gets a
//! fresh project folder, HOME, `.npmrc` and empty cache/store; target order is rotated per
//! repeat. Prints each time, medians, and the ratios AgentRegistry/nginx and
//! AgentRegistry/Verdaccio of install time (below 1 means AgentRegistry was faster).
//!
//! Two trees: `full` is the corpus tree (`e2e-package.json`, 485 packages); `small` is
//! `react`, `react-dom` and `yargs`, whose closure in the corpus is 19 packages.
//!
//! `--concurrent K` starts K cold installs of the tree at once against one target (each in
//! its own scratch folder), waits for all, and records every install's wall time and the
//! batch's wall time (first start to last finish); one batch per target and repeat, the
//! target order rotated per repeat. Verdaccio is off by default in that mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::compare::median;
use crate::fixture::{Fixture, FixtureOpts};
use crate::procstat::CpuWindow;
use crate::targets::{self, Kind};

/// Which dependency tree to install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Tree {
    /// The corpus tree, `e2e-package.json` (485 packages).
    Full,
    /// `react`, `react-dom`, `yargs`: 19 packages, all in the corpus.
    Small,
}

/// The small tree's root dependencies (their closure in the corpus: 19 packages).
const SMALL_TREE: &str = r#"{
  "name": "perf-small-tree",
  "private": true,
  "version": "0.0.0",
  "dependencies": {
    "react": "^19.3.1",
    "react-dom": "^19.3.1",
    "yargs": "^17.7.3"
  }
}
"#;

impl Tree {
    fn label(self) -> &'static str {
        match self {
            Tree::Full => "full (e2e-package.json, 485 packages)",
            Tree::Small => "small (react, react-dom, yargs: 19 packages)",
        }
    }

    /// Packages whose presence marks a complete install.
    fn markers(self) -> &'static [&'static str] {
        match self {
            Tree::Full => &["express", "typescript"],
            Tree::Small => &["react-dom", "yargs"],
        }
    }
}

/// `clients` options.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct ClientsOpts {
    /// Installs (or, with --concurrent, batches) per tool and target.
    #[arg(long, default_value_t = 3)]
    pub(crate) repeats: usize,
    /// Which clients to time: npm, pnpm, bun (default: npm,bun; with --concurrent: npm).
    #[arg(long, value_delimiter = ',')]
    pub(crate) tools: Option<Vec<String>>,
    /// Which tree to install (default: full; with --concurrent: small).
    #[arg(long, value_enum)]
    pub(crate) tree: Option<Tree>,
    /// Start this many cold installs at once per target and repeat, instead of one at a time.
    #[arg(long)]
    pub(crate) concurrent: Option<usize>,
    /// With --concurrent: batches per tool and target run (and discarded) before the timed
    /// ones (with bun, the first batch after start-up was often much faster than later ones).
    #[arg(long, default_value_t = 0)]
    pub(crate) warmup_batches: usize,
    /// With --concurrent: include Verdaccio too (off by default in that mode).
    #[arg(long)]
    pub(crate) with_verdaccio: bool,
    /// Seconds one install may take before it is killed (and counted as failed).
    #[arg(long, default_value_t = 600)]
    pub(crate) install_timeout: u64,
    /// Before each install (or batch), `sync` and wait up to this many seconds for a quiet
    /// machine.
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
        "bun" | "pnpm" => {
            let bin = targets::workspace_root().join(".tools/bin").join(tool);
            anyhow::ensure!(
                bin.is_file(),
                "{} is missing: run scripts/install-tools.sh",
                bin.display()
            );
            Ok(bin)
        }
        other => anyhow::bail!("unknown client {other:?} (npm, pnpm or bun)"),
    }
}

/// One install's scratch folder and command, ready to start.
struct Prepared {
    scratch: tempfile::TempDir,
    cmd: Command,
}

fn prepare(tool: &str, registry_url: &str, package_json: &str) -> Result<Prepared> {
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
    std::fs::write(project.join("package.json"), package_json)?;
    // npm and pnpm read `.npmrc`; pnpm's store and cache live in this install's scratch
    // folder (same filesystem as the project, so it can hard-link as it does normally).
    let npmrc = format!(
        "registry={registry_url}/\ncache={}\nupdate-notifier=false\nfund=false\naudit=false\n\
         store-dir={}\ncache-dir={}\nstate-dir={}\n",
        cache.join("npm").display(),
        cache.join("pnpm-store").display(),
        cache.join("pnpm-cache").display(),
        cache.join("pnpm-state").display(),
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
        "pnpm" => {
            cmd.arg("install")
                .arg("--reporter=silent")
                .arg("--store-dir")
                .arg(cache.join("pnpm-store"))
                .arg("--cache-dir")
                .arg(cache.join("pnpm-cache"));
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
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .env("PNPM_HOME", home.join(".pnpm"))
        .env("BUN_INSTALL_CACHE_DIR", cache.join("bun"))
        .env("BUN_INSTALL", home.join(".bun"))
        .env("DO_NOT_TRACK", "1")
        .env("CI", "1")
        .env("TMPDIR", &tmp)
        .env("LANG", "C.UTF-8")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(root.join("out.log"))?))
        .stderr(Stdio::from(std::fs::File::create(root.join("err.log"))?));
    Ok(Prepared { scratch, cmd })
}

/// Whether the install completed, and a detail line (size and package count, or the error).
fn verdict(
    prepared: &Prepared,
    tree: Tree,
    status: Option<ExitStatus>,
    report_size: bool,
) -> (bool, String) {
    let root = prepared.scratch.path();
    let modules = root.join("project/node_modules");
    let installed = tree
        .markers()
        .iter()
        .all(|m| modules.join(m).join("package.json").is_file());
    let ok = status.is_some_and(|s| s.success()) && installed;
    if ok {
        let size = if report_size {
            format!(
                "node_modules {:.0} MiB, ",
                dir_bytes(&modules) as f64 / 1048576.0
            )
        } else {
            String::new()
        };
        return (ok, format!("{size}{} packages", count_packages(&modules)));
    }
    let err = std::fs::read_to_string(root.join("err.log")).unwrap_or_default();
    let out = std::fs::read_to_string(root.join("out.log")).unwrap_or_default();
    let both = format!("{err}{out}");
    let tail: String = both
        .chars()
        .rev()
        .take(600)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (
        false,
        format!("status {status:?}, installed {installed}: {tail}"),
    )
}

fn install_once(
    tool: &str,
    registry_url: &str,
    server_pid: u32,
    package_json: &str,
    tree: Tree,
    timeout: Duration,
) -> Result<(f64, f64, bool, String)> {
    let mut prepared = prepare(tool, registry_url, package_json)?;
    let window = CpuWindow::start(Some(server_pid))?;
    let start = Instant::now();
    let mut child = prepared
        .cmd
        .spawn()
        .with_context(|| format!("starting {tool}"))?;
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
    let (ok, detail) = verdict(&prepared, tree, status, true);
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

/// Installed packages: pnpm's `.pnpm/<name>@<version>` folders if present, otherwise every
/// `node_modules/<name>` (and `@scope/<name>`) with a package.json, nested ones included.
fn count_packages(modules: &Path) -> usize {
    let pnpm = modules.join(".pnpm");
    if pnpm.is_dir() {
        return std::fs::read_dir(&pnpm).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter(|e| e.file_name() != "node_modules")
                .count()
        });
    }
    fn walk(modules: &Path) -> usize {
        let Ok(rd) = std::fs::read_dir(modules) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if name.starts_with('@') {
                n += walk(&e.path());
                continue;
            }
            if e.path().join("package.json").is_file() {
                n += 1 + walk(&e.path().join("node_modules"));
            }
        }
        n
    }
    walk(modules)
}

fn tree_json(fixture: &Fixture, tree: Tree) -> Result<String> {
    match tree {
        Tree::Full => {
            let path = fixture.corpus_dir.join("e2e-package.json");
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        }
        Tree::Small => Ok(SMALL_TREE.to_owned()),
    }
}

pub(crate) fn run(opts: &ClientsOpts) -> Result<()> {
    let concurrent = opts.concurrent.filter(|&k| k > 0);
    let tools = opts.tools.clone().unwrap_or_else(|| {
        if concurrent.is_some() {
            vec!["npm".to_owned()]
        } else {
            vec!["npm".to_owned(), "bun".to_owned()]
        }
    });
    let tree = opts.tree.unwrap_or(if concurrent.is_some() {
        Tree::Small
    } else {
        Tree::Full
    });
    for tool in &tools {
        tool_program(tool)?;
    }
    let mut fixture_opts = opts.fixture.clone();
    if concurrent.is_some() && !opts.with_verdaccio {
        fixture_opts.no_verdaccio = true;
    }
    let fixture = Fixture::setup(&fixture_opts)?;
    let package_json = tree_json(&fixture, tree)?;
    println!("# perf clients\n\n{}", crate::machine_description());
    println!("- tree: {}", tree.label());
    if let Some(k) = concurrent {
        return run_concurrent(opts, &fixture, &tools, tree, &package_json, k);
    }
    println!();
    let mut samples: Vec<Sample> = Vec::new();
    let n = fixture.targets.len();
    for rep in 0..opts.repeats.max(1) {
        for tool in &tools {
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
                    tree,
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
    for tool in &tools {
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
    for tool in &tools {
        let ar = med(tool, Kind::AgentRegistry);
        let ng = med(tool, Kind::Nginx);
        let vd = med(tool, Kind::Verdaccio);
        let r_ng = ar.zip(ng).map(|(a, n)| a / n);
        let r_vd = ar.zip(vd).map(|(a, v)| a / v);
        println!(
            "| {tool} | {} | {} | {} |",
            fmt3(r_ng),
            fmt3(r_vd),
            verdict_word(r_ng)
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

fn fmt3(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.3}"))
}

fn fmt2(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

fn verdict_word(ratio: Option<f64>) -> &'static str {
    match ratio {
        Some(r) if r <= 1.05 => "met",
        Some(_) => "**MISSED**",
        None => "not measured",
    }
}

/// One batch of K concurrent installs against one target.
struct Batch {
    tool: String,
    target: Kind,
    repeat: usize,
    /// First start to last finish.
    wall: f64,
    /// Each install's own wall time (failed ones included, flagged in `failed`).
    installs: Vec<f64>,
    failed: Vec<String>,
    server_cpu_seconds: f64,
    /// Busy cores just before the batch (other tenants and our idle servers).
    busy_before: f64,
    packages: Option<usize>,
}

/// One batch: where it runs, and what it installs.
struct BatchSpec<'a> {
    tool: &'a str,
    target: Kind,
    registry_url: &'a str,
    server_pid: u32,
    package_json: &'a str,
    tree: Tree,
    k: usize,
    timeout: Duration,
    repeat: usize,
    busy_before: f64,
}

fn run_batch(spec: &BatchSpec<'_>) -> Result<Batch> {
    let BatchSpec {
        tool,
        registry_url,
        server_pid,
        package_json,
        tree,
        k,
        timeout,
        ..
    } = *spec;

    let mut prepared = (0..k)
        .map(|_| prepare(tool, registry_url, package_json))
        .collect::<Result<Vec<_>>>()?;
    let window = CpuWindow::start(Some(server_pid))?;
    let first = Instant::now();
    let mut running: Vec<(Instant, Option<Child>)> = Vec::with_capacity(k);
    let mut spawn_error = None;
    for p in &mut prepared {
        let start = Instant::now();
        match p.cmd.spawn() {
            Ok(child) => running.push((start, Some(child))),
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = spawn_error {
        for (_, child) in &mut running {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        return Err(anyhow::anyhow!(e).context(format!("starting {tool} #{}", running.len())));
    }
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; k];
    let mut seconds = vec![0.0; k];
    let mut last_finish = first;
    let mut left = k;
    while left > 0 {
        for (i, (start, slot)) in running.iter_mut().enumerate() {
            let Some(child) = slot.as_mut() else { continue };
            let done = match child.try_wait()? {
                Some(status) => {
                    statuses[i] = Some(status);
                    true
                }
                None if start.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    true
                }
                None => false,
            };
            if done {
                let now = Instant::now();
                seconds[i] = now.duration_since(*start).as_secs_f64();
                last_finish = last_finish.max(now);
                *slot = None;
                left -= 1;
            }
        }
        if left > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let wall = last_finish.duration_since(first).as_secs_f64();
    let window_seconds = first.elapsed().as_secs_f64();
    let cpu = window.finish()?;
    let mut failed = Vec::new();
    let mut packages = None;
    for (i, p) in prepared.iter().enumerate() {
        let (ok, detail) = verdict(p, tree, statuses[i], false);
        if ok {
            if packages.is_none() {
                packages = detail
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<usize>().ok());
            }
        } else {
            failed.push(format!("#{i} ({:.1} s): {detail}", seconds[i]));
        }
    }
    Ok(Batch {
        tool: tool.to_owned(),
        target: spec.target,
        repeat: spec.repeat,
        wall,
        installs: seconds,
        failed,
        server_cpu_seconds: cpu.server.unwrap_or(0.0) * window_seconds,
        busy_before: spec.busy_before,
        packages,
    })
}

fn run_concurrent(
    opts: &ClientsOpts,
    fixture: &Fixture,
    tools: &[String],
    tree: Tree,
    package_json: &str,
    k: usize,
) -> Result<()> {
    println!(
        "- mode: {k} concurrent cold installs per batch (each its own project, HOME, .npmrc, \
         empty cache), one batch per tool, target and repeat, target order rotated per repeat\n"
    );
    let n = fixture.targets.len();
    for w in 0..opts.warmup_batches {
        for tool in tools {
            for t in &fixture.targets {
                let _ = Command::new("sync").status();
                let batch = run_batch(&BatchSpec {
                    tool,
                    target: t.server.kind,
                    registry_url: &t.server.target.base,
                    server_pid: t.server.pid,
                    package_json,
                    tree,
                    k,
                    timeout: Duration::from_secs(opts.install_timeout),
                    repeat: w,
                    busy_before: 0.0,
                })?;
                eprintln!(
                    "warm-up {w}: {k} x {tool} against {}: batch {:.2} s (discarded), {} failed",
                    t.server.kind.label(),
                    batch.wall,
                    batch.failed.len()
                );
            }
        }
    }
    let mut batches: Vec<Batch> = Vec::new();
    for rep in 0..opts.repeats.max(1) {
        for tool in tools {
            for j in 0..n {
                let t = &fixture.targets[(j + rep) % n];
                let _ = Command::new("sync").status();
                let (busy_before, _) = crate::procstat::wait_for_quiet(
                    opts.quiet_threshold,
                    Duration::from_secs_f64(opts.quiet_wait),
                )?;
                let batch = run_batch(&BatchSpec {
                    tool,
                    target: t.server.kind,
                    registry_url: &t.server.target.base,
                    server_pid: t.server.pid,
                    package_json,
                    tree,
                    k,
                    timeout: Duration::from_secs(opts.install_timeout),
                    repeat: rep,
                    busy_before,
                })?;
                let Batch {
                    ref installs,
                    ref failed,
                    wall,
                    server_cpu_seconds,
                    packages,
                    ..
                } = batch;
                eprintln!(
                    "repeat {rep}: {k} x {tool} against {}: batch {wall:.2} s, median install \
                     {} s, max {} s, {} failed, server CPU {server_cpu_seconds:.2} s, busy \
                     before {busy_before:.2} cores, {} packages",
                    t.server.kind.label(),
                    fmt2(median(installs.clone())),
                    fmt2(installs.iter().copied().reduce(f64::max)),
                    failed.len(),
                    packages.map_or("?".to_owned(), |p| p.to_string()),
                );
                for f in failed.iter().take(3) {
                    eprintln!("  failed {f}");
                }
                batches.push(batch);
            }
        }
    }

    println!(
        "| client | target | repeat | batch wall s | median install s | max install s | failed | server CPU-s | busy cores before | packages |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for b in &batches {
        println!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {:.2} | {:.2} | {} |",
            b.tool,
            b.target.label(),
            b.repeat + 1,
            b.wall,
            fmt2(median(b.installs.clone())),
            fmt2(b.installs.iter().copied().reduce(f64::max)),
            b.failed.len(),
            b.server_cpu_seconds,
            b.busy_before,
            b.packages.map_or("?".to_owned(), |p| p.to_string()),
        );
    }
    // A batch with a failed install does not count towards the medians.
    let good = |tool: &str, kind: Kind| -> Vec<&Batch> {
        batches
            .iter()
            .filter(|b| b.tool == tool && b.target == kind && b.failed.is_empty())
            .collect()
    };
    let wall_med =
        |tool: &str, kind: Kind| median(good(tool, kind).iter().map(|b| b.wall).collect());
    let install_med = |tool: &str, kind: Kind| {
        median(
            good(tool, kind)
                .iter()
                .flat_map(|b| b.installs.iter().copied())
                .collect(),
        )
    };
    println!(
        "\n| client | target | median batch wall s | median install s (all installs) | good batches |"
    );
    println!("|---|---|---|---|---|");
    let kinds: Vec<Kind> = fixture.targets.iter().map(|t| t.server.kind).collect();
    for tool in tools {
        for &kind in &kinds {
            println!(
                "| {tool} | {} | {} | {} | {} |",
                kind.label(),
                fmt2(wall_med(tool, kind)),
                fmt2(install_med(tool, kind)),
                good(tool, kind).len()
            );
        }
    }
    println!(
        "\n| client | AR/nginx batch wall (target <= 1.05) | per-round AR/nginx | AR/nginx median install | AR/Verdaccio batch wall | verdict |"
    );
    println!("|---|---|---|---|---|---|");
    for tool in tools {
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let r_ng = ratio(
            wall_med(tool, Kind::AgentRegistry),
            wall_med(tool, Kind::Nginx),
        );
        let r_inst = ratio(
            install_med(tool, Kind::AgentRegistry),
            install_med(tool, Kind::Nginx),
        );
        let r_vd = ratio(
            wall_med(tool, Kind::AgentRegistry),
            wall_med(tool, Kind::Verdaccio),
        );
        let per_round: Vec<String> = (0..opts.repeats.max(1))
            .map(|rep| {
                let of = |kind: Kind| {
                    batches
                        .iter()
                        .find(|b| {
                            &b.tool == tool
                                && b.target == kind
                                && b.repeat == rep
                                && b.failed.is_empty()
                        })
                        .map(|b| b.wall)
                };
                fmt3(ratio(of(Kind::AgentRegistry), of(Kind::Nginx)))
            })
            .collect();
        println!(
            "| {tool} | {} | {} | {} | {} | {} |",
            fmt3(r_ng),
            per_round.join(", "),
            fmt3(r_inst),
            fmt3(r_vd),
            verdict_word(r_ng)
        );
    }
    for b in &batches {
        for f in &b.failed {
            println!(
                "- failed: {} against {} (repeat {}): {f}",
                b.tool,
                b.target.label(),
                b.repeat + 1
            );
        }
    }
    Ok(())
}
