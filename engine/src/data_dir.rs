//! Facts of a data directory, stored with the data in `<home>/format.json`: the data-format
//! version and the shard count. Both are fixed when the directory is created. An unknown
//! format version is refused with a clear message, never opened.
//!
//! Layout of `<home>`:
//!   format.json        {"format":"agentregistry","format_version":3,"shard_count":N}
//!   config.bin         the config record (config_record.rs)
//!   auth.redb          users and token hashes (auth.rs)
//!   shards/NNN.redb    one redb file per shard (shard/)
//!   blobs/             content-addressed tarballs (blob/)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blob::{create_dir_durable, sync_dir};
use crate::shard::ShardId;

/// The data format this build writes. Version 2: package records may leave their manifests
/// to rows of the shard's `manifests` table (data format 2), which a build of version 1
/// would read as manifests. This build reads version 1 too, and marks such a directory 2
/// when it opens it, before it can write a record of the new kind. Version 3: inline
/// tarballs are stored in rows of the shard's `inline_rows` table that the version's
/// `TarballRef` names, which a build of version 2 would not find. A directory of version 1 or
/// 2 is marked 3 when this build opens it; what it stored inline stays in `blob_inline`.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest data format this build reads.
pub const FORMAT_VERSION_MIN: u32 = 1;
const FORMAT_NAME: &str = "agentregistry";
const FORMAT_FILE: &str = "format.json";

#[derive(Serialize, Deserialize)]
struct FormatFile {
    format: String,
    format_version: u32,
    shard_count: u16,
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} has data format version {found}, but this build reads versions up to {supported}; \
         use a matching agentregistry release (the directory was left untouched)"
    )]
    UnknownFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path} is not an AgentRegistry format file: {detail}")]
    NotOurs { path: PathBuf, detail: String },
    #[error("shard count must be between 1 and 1024, got {0}")]
    BadShardCount(u32),
}

/// An opened data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    home: PathBuf,
    shard_count: u16,
}

impl DataDir {
    /// Opens `home`, creating it with `shard_count_new` shards when it holds no data yet.
    /// An existing directory keeps its own shard count whatever `shard_count_new` says.
    ///
    /// # Errors
    /// I/O errors, a foreign or unknown-version format file, or a bad shard count.
    pub fn open_or_create(home: &Path, shard_count_new: u32) -> Result<DataDir, OpenError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        create_dir_durable(home).map_err(io_err(home))?;
        let path = home.join(FORMAT_FILE);
        let shard_count = match fs::read(&path) {
            Ok(bytes) => {
                let (count, version) = read_format(&path, &bytes)?;
                if version < FORMAT_VERSION {
                    write_format(home, &path, count).map_err(io_err(&path))?;
                }
                count
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let count = u16::try_from(shard_count_new)
                    .ok()
                    .filter(|c| (1..=1024).contains(c))
                    .ok_or(OpenError::BadShardCount(shard_count_new))?;
                write_format(home, &path, count).map_err(io_err(&path))?;
                count
            }
            Err(e) => return Err(OpenError::Io { path, source: e }),
        };
        let shards = home.join("shards");
        create_dir_durable(&shards).map_err(io_err(&shards))?;
        Ok(DataDir {
            home: home.to_path_buf(),
            shard_count,
        })
    }

    /// The directory.
    #[must_use]
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Number of shards, fixed at creation.
    #[must_use]
    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// The redb file of shard `id`.
    #[must_use]
    pub fn shard_path(&self, id: ShardId) -> PathBuf {
        self.home.join("shards").join(format!("{:03}.redb", id.0))
    }

    /// The blob store's root.
    #[must_use]
    pub fn blobs_path(&self) -> PathBuf {
        self.home.join("blobs")
    }

    /// The auth database.
    #[must_use]
    pub fn auth_path(&self) -> PathBuf {
        self.home.join("auth.redb")
    }

    /// The config record.
    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.home.join("config.bin")
    }
}

/// The shard count and the format version of a format file this build reads.
fn read_format(path: &Path, bytes: &[u8]) -> Result<(u16, u32), OpenError> {
    let not_ours = |detail: String| OpenError::NotOurs {
        path: path.to_path_buf(),
        detail,
    };
    let format: FormatFile = serde_json::from_slice(bytes).map_err(|e| not_ours(e.to_string()))?;
    if format.format != FORMAT_NAME {
        return Err(not_ours(format!("format is {:?}", format.format)));
    }
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&format.format_version) {
        return Err(OpenError::UnknownFormat {
            path: path.to_path_buf(),
            found: format.format_version,
            supported: FORMAT_VERSION,
        });
    }
    if format.shard_count == 0 {
        return Err(not_ours("shard_count is 0".into()));
    }
    Ok((format.shard_count, format.format_version))
}

fn write_format(home: &Path, path: &Path, shard_count: u16) -> io::Result<()> {
    let format = FormatFile {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        shard_count,
    };
    let bytes = serde_json::to_vec_pretty(&format).map_err(io::Error::other)?;
    let tmp = home.join("format.json.tmp");
    fs::write(&tmp, bytes)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(home)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_count_is_data_and_unknown_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open_or_create(dir.path(), 4).unwrap();
        assert_eq!(first.shard_count(), 4);
        let again = DataDir::open_or_create(dir.path(), 2).unwrap();
        assert_eq!(again.shard_count(), 4);
        let path = dir.path().join(FORMAT_FILE);
        let before = fs::read(&path).unwrap();
        fs::write(
            &path,
            br#"{"format":"agentregistry","format_version":99,"shard_count":4}"#,
        )
        .unwrap();
        let err = DataDir::open_or_create(dir.path(), 2).unwrap_err();
        assert!(
            matches!(err, OpenError::UnknownFormat { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 99"));
        fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            DataDir::open_or_create(dir.path(), 2),
            Err(OpenError::NotOurs { .. })
        ));
        fs::write(&path, before).unwrap();
        assert!(DataDir::open_or_create(dir.path(), 2).is_ok());
        // A version-1 directory is read, and marked with the version this build writes.
        fs::write(
            &path,
            br#"{"format":"agentregistry","format_version":1,"shard_count":4}"#,
        )
        .unwrap();
        assert_eq!(
            DataDir::open_or_create(dir.path(), 2)
                .unwrap()
                .shard_count(),
            4
        );
        let marked: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(marked["format_version"], FORMAT_VERSION);
    }
}
