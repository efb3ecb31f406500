//! The fsck report (findings by kind, with what repair did) and progress reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What kind of problem a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A referenced blob whose bytes do not hash to its name (or cannot be read).
    CorruptBlob,
    /// A referenced blob that is not in the store.
    MissingBlob,
    /// A blob whose sha512 or sha1 differs from the version's `dist.integrity`/`dist.shasum`.
    IntegrityMismatch,
    /// A package record that does not decode, or whose versions and tarball index disagree.
    CorruptPackage,
    /// A served record that is missing, garbage, or not what rendering the package gives.
    StaleServed,
    /// A `revs` entry that disagrees with the package record.
    RevsMismatch,
    /// A row of the `manifests` table that no package record names (`name@version`).
    OrphanManifest,
    /// A blob no version and no served record names.
    OrphanBlob,
    /// A leftover temp file.
    TempFile,
    /// A redb file that fails redb's integrity check, cannot be opened or is missing.
    RedbCorrupt,
    /// A config record slot that does not decode, or is older than the other slot.
    ConfigSlotBad,
    /// `format.json` is missing, foreign or of another format version.
    FormatBad,
}

impl FindingKind {
    /// False for what a crash may legitimately leave behind (a blob written before its
    /// metadata committed, a temp file): reported, collected by `--repair`, but not damage.
    #[must_use]
    pub fn is_corruption(self) -> bool {
        !matches!(self, FindingKind::OrphanBlob | FindingKind::TempFile)
    }

    /// The snake-case name used in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::CorruptBlob => "corrupt_blob",
            FindingKind::MissingBlob => "missing_blob",
            FindingKind::IntegrityMismatch => "integrity_mismatch",
            FindingKind::CorruptPackage => "corrupt_package",
            FindingKind::StaleServed => "stale_served",
            FindingKind::RevsMismatch => "revs_mismatch",
            FindingKind::OrphanManifest => "orphan_manifest",
            FindingKind::OrphanBlob => "orphan_blob",
            FindingKind::TempFile => "temp_file",
            FindingKind::RedbCorrupt => "redb_corrupt",
            FindingKind::ConfigSlotBad => "config_slot_bad",
            FindingKind::FormatBad => "format_bad",
        }
    }
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// What it is about: `name@version`, a package name, a blob's hex id or a path.
    pub subject: String,
    pub detail: String,
    /// What repair did about it; `None` when nothing was done.
    pub repaired: Option<String>,
}

/// What was looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checked {
    pub shards: u64,
    pub packages: u64,
    pub versions: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
}

/// The result of a check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub home: PathBuf,
    /// Run inside a running server (redb integrity was not checked).
    pub online: bool,
    pub repair: bool,
    pub checked: Checked,
    /// Number of findings of each kind.
    pub counts: BTreeMap<FindingKind, u64>,
    pub findings: Vec<Finding>,
    /// What was skipped, and why.
    pub notes: Vec<String>,
}

impl Report {
    pub(super) fn new(home: &Path, online: bool, repair: bool) -> Report {
        Report {
            home: home.to_path_buf(),
            online,
            repair,
            ..Report::default()
        }
    }

    /// True when nothing was found.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Findings that repair did not (or could not) fix.
    pub fn unrepaired(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.repaired.is_none())
    }

    /// Number of findings of `kind`.
    #[must_use]
    pub fn count(&self, kind: FindingKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub(super) fn push(
        &mut self,
        kind: FindingKind,
        subject: impl Into<String>,
        detail: String,
    ) -> usize {
        *self.counts.entry(kind).or_default() += 1;
        self.findings.push(Finding {
            kind,
            subject: subject.into(),
            detail,
            repaired: None,
        });
        self.findings.len() - 1
    }

    pub(super) fn repaired(&mut self, index: usize, what: impl Into<String>) {
        self.findings[index].repaired = Some(what.into());
    }

    /// A plain-text rendering for terminals: summary, counts, one line per finding, notes.
    #[must_use]
    pub fn render_text(&self) -> String {
        let c = &self.checked;
        let mut out = format!(
            "fsck of {}{}: {} shards, {} packages, {} versions, {} blobs ({} bytes) checked\n",
            self.home.display(),
            if self.online {
                " (through the server)"
            } else {
                ""
            },
            c.shards,
            c.packages,
            c.versions,
            c.blobs,
            c.blob_bytes,
        );
        for (kind, count) in &self.counts {
            let _ = writeln!(out, "  {:<20} {count}", kind.name());
        }
        for f in &self.findings {
            let _ = writeln!(out, "{} {}: {}", f.kind.name(), f.subject, f.detail);
            if let Some(repaired) = &f.repaired {
                let _ = writeln!(out, "  repaired: {repaired}");
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let unrepaired = self.unrepaired().count();
        if self.is_clean() {
            out.push_str("clean\n");
        } else if unrepaired == 0 {
            let _ = writeln!(out, "{} findings, all repaired", self.findings.len());
        } else {
            let _ = writeln!(
                out,
                "{} findings, {unrepaired} not repaired{}",
                self.findings.len(),
                if self.repair {
                    ""
                } else {
                    " (run with --repair to fix the safe ones)"
                }
            );
        }
        out
    }
}

/// The stage a long run is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Opening and integrity-checking redb files (offline only).
    Open,
    /// Reading package records and served records.
    Metadata,
    /// Reading and hashing blobs.
    Blobs,
    /// Applying repairs.
    Repair,
    /// Copying (backup and restore).
    Copy,
}

impl Phase {
    /// A short name for progress bars.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Metadata => "metadata",
            Phase::Blobs => "blobs",
            Phase::Repair => "repair",
            Phase::Copy => "copy",
        }
    }
}

/// Progress of a long run, reported often (at least once per item of each phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::FindingKind::{MissingBlob, OrphanBlob};
    use super::*;

    #[test]
    fn report_counts_and_renders() {
        let mut report = Report::new(Path::new("/h"), false, true);
        assert!(report.is_clean());
        let i = report.push(OrphanBlob, "ab", "1 bytes".into());
        report.push(MissingBlob, "cd", "gone".into());
        report.repaired(i, "deleted");
        assert_eq!(report.count(OrphanBlob), 1);
        assert_eq!(report.unrepaired().count(), 1);
        let text = report.render_text();
        assert!(text.contains("missing_blob cd: gone"), "{text}");
        assert!(text.contains("1 not repaired"), "{text}");
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
