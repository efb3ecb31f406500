//! The redb tables of a shard and their encodings. Keys are canonical package names.
//!
//! - `packages`: name -> `StoredPackage` (JSON): the source of truth for metadata.
//! - `served`:   name -> served record (`served.rs`): pre-rendered documents + tarball index.
//! - `revs`:     name -> u64 revision: lets a core check a cached served record cheaply.
//! - `meta`:     key -> bytes: facts about the shard (e.g. the base URL documents embed).

use redb::TableDefinition;

pub(crate) const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("packages");
pub(crate) const SERVED: TableDefinition<&str, &[u8]> = TableDefinition::new("served");
pub(crate) const REVS: TableDefinition<&str, u64> = TableDefinition::new("revs");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `meta` key: the public base URL the served documents were rendered for.
pub(crate) const META_BASE_URL: &str = "base_url";
