//! `agentregistry fsck | backup | restore`. Each first opens the data directory itself. When a
//! running server holds it (redb's exclusive lock refuses the open), `fsck` and `backup` go
//! through that server's admin endpoints, found through `<home>/server.json`; `restore` needs
//! the server stopped and says so.
//!
//! Exit codes (`Outcome::code`): 0 done and nothing left to fix; 1 findings left (fsck), blobs
//! that could not be backed up, or a backup that failed verification (restore); usage and I/O
//! errors are `Err` (the binary exits 2). Progress bars go to stderr, only when it is a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::backup::{BackupError, BackupSummary};
use engine::fsck::{FsckError, Phase, Progress, Report};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::client::{ClientError, Server};

/// How long `restore` waits for a ping before deciding no server runs.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What a subcommand prints and how the process exits.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

/// Why a subcommand could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Fsck(#[from] FsckError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "a server is running on this data directory ({url}): stop it before restoring, then \
         run restore again"
    )]
    ServerRunning { url: String },
    #[error("cannot resolve {}: {source}", .path.display())]
    Path {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `agentregistry fsck [--repair] [--json]`.
///
/// # Errors
/// The directory cannot be checked at all (not a data directory, server unreachable, I/O).
pub fn fsck(home: &Path, repair: bool, json: bool) -> Result<Outcome, CliError> {
    let mut bar = Bar::new();
    let checked = engine::fsck::check_offline(home, repair, &mut |p| bar.update(p));
    bar.finish();
    let report: Report = match checked {
        Ok(report) => report,
        Err(FsckError::Locked { .. }) => {
            let server = Server::of_home(home)?;
            let _spinner = spinner(format!("fsck through the server at {}", server.url()));
            server.post("/-/admin/fsck", &json!({ "repair": repair }))?
        }
        Err(e) => return Err(e.into()),
    };
    let stdout = if json {
        let mut text = serde_json::to_string_pretty(&report).expect("a report serializes");
        text.push('\n');
        text
    } else {
        report.render_text()
    };
    // Exit 1 only for damage; leftovers of an interrupted write are reported but expected.
    let code = u8::from(report.unrepaired().any(|f| f.kind.is_corruption()));
    Ok(Outcome {
        stdout,
        stderr: String::new(),
        code,
    })
}

/// `agentregistry backup DIR`.
///
/// # Errors
/// The backup could not be written.
pub fn backup(home: &Path, dir: &Path) -> Result<Outcome, CliError> {
    let dest = std::path::absolute(dir).map_err(|source| CliError::Path {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut bar = Bar::new();
    let written = engine::backup::backup_offline(home, &dest, &mut |p| bar.update(p));
    bar.finish();
    let summary: BackupSummary = match written {
        Ok(summary) => summary,
        Err(BackupError::Locked { .. }) => {
            let server = Server::of_home(home)?;
            let _spinner = spinner(format!("backup through the server at {}", server.url()));
            server.post("/-/admin/backup", &json!({ "dir": dest }))?
        }
        Err(e) => return Err(e.into()),
    };
    let stdout = format!(
        "backup written to {}\n  {} shards, {} packages, {} blobs ({} bytes)\n",
        summary.path.display(),
        summary.shard_count,
        summary.packages,
        summary.blobs,
        summary.blob_bytes
    );
    let mut stderr = String::new();
    for damaged in &summary.damaged_blobs {
        stderr.push_str(&format!(
            "not backed up (damaged in the source): {damaged}\n"
        ));
    }
    Ok(Outcome {
        stdout,
        code: u8::from(!stderr.is_empty()),
        stderr,
    })
}

/// `agentregistry restore BACKUP_DIR [--force]`.
///
/// # Errors
/// A running server, a non-empty home without `force`, not a backup, I/O errors.
pub fn restore(backup_dir: &Path, home: &Path, force: bool) -> Result<Outcome, CliError> {
    if let Ok(server) = Server::of_home(home) {
        if server.answers_ping(PING_TIMEOUT) {
            return Err(CliError::ServerRunning {
                url: server.url().to_owned(),
            });
        }
    }
    let mut bar = Bar::new();
    let restored = engine::backup::restore(backup_dir, home, force, &mut |p| bar.update(p));
    bar.finish();
    match restored {
        Ok(summary) => {
            let mut stdout = format!(
                "restored {} into {}\n",
                backup_dir.display(),
                summary.home.display()
            );
            if let Some(previous) = &summary.previous {
                stdout.push_str(&format!(
                    "the previous contents were moved to {}\n",
                    previous.display()
                ));
            }
            stdout.push_str(&summary.report.render_text());
            Ok(Outcome {
                stdout,
                stderr: String::new(),
                code: 0,
            })
        }
        Err(e @ BackupError::Verify { .. }) => Ok(Outcome {
            stdout: String::new(),
            stderr: format!("{e}\n"),
            code: 1,
        }),
        Err(BackupError::ServerRunning { path }) => Err(CliError::ServerRunning {
            url: format!("it holds {}", path.display()),
        }),
        Err(e) => Err(e.into()),
    }
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A progress bar that follows `Progress` reports, one phase after another.
struct Bar {
    bar: ProgressBar,
    phase: Option<Phase>,
}

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(None, draw_target());
        let style = ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        Bar { bar, phase: None }
    }

    fn update(&mut self, progress: Progress) {
        if self.phase != Some(progress.phase) {
            self.phase = Some(progress.phase);
            self.bar.reset();
            self.bar.set_message(progress.phase.name());
        }
        self.bar.set_length(progress.total);
        self.bar.set_position(progress.done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A spinner while the server works; cleared when dropped.
struct Spinner(ProgressBar);

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn spinner(message: String) -> Spinner {
    let bar = ProgressBar::with_draw_target(None, draw_target());
    bar.set_style(ProgressStyle::default_spinner());
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    Spinner(bar)
}
