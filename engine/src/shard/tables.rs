//! The redb tables of a shard and their encodings. Keys are canonical package names.
//!
//! - `packages`: name -> `StoredPackage` (JSON): the source of truth for metadata.
//! - `served`:   name -> served index (`served.rs`): revision and tarball index.
//! - `doc_full`, `doc_full_gz`, `doc_abbr`, `doc_abbr_gz`: name -> one pre-rendered document
//!   each (`served.rs`), in separate tables so a read copies, and redb caches, only the
//!   representation clients ask for.
//! - `revs`:     name -> u64 revision: lets a core check a cached served value cheaply.
//! - `meta`:     key -> bytes: facts about the shard (e.g. the base URL documents embed).

use redb::TableDefinition;

pub(crate) const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("packages");
pub(crate) const SERVED: TableDefinition<&str, &[u8]> = TableDefinition::new("served");
/// Indexed by `DocKind::index`.
pub(crate) const DOCS: [TableDefinition<&str, &[u8]>; 4] = [
    TableDefinition::new("doc_full"),
    TableDefinition::new("doc_full_gz"),
    TableDefinition::new("doc_abbr"),
    TableDefinition::new("doc_abbr_gz"),
];
pub(crate) const REVS: TableDefinition<&str, u64> = TableDefinition::new("revs");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `meta` key: the public base URL the served documents were rendered for.
pub(crate) const META_BASE_URL: &str = "base_url";
/// `meta` key: the layout version (`served::FORMAT`, one byte) of the served values.
pub(crate) const META_SERVED_FORMAT: &str = "served_format";

/// The served tables of a write transaction, opened once for many packages.
pub(crate) struct ServedTables<'txn> {
    index: redb::Table<'txn, &'static str, &'static [u8]>,
    docs: [redb::Table<'txn, &'static str, &'static [u8]>; 4],
}

impl<'txn> ServedTables<'txn> {
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(ServedTables {
            index: txn.open_table(SERVED)?,
            docs: [
                txn.open_table(DOCS[0])?,
                txn.open_table(DOCS[1])?,
                txn.open_table(DOCS[2])?,
                txn.open_table(DOCS[3])?,
            ],
        })
    }

    /// Stores every served value of `name`.
    pub(crate) fn put(
        &mut self,
        name: &str,
        encoded: &crate::served::EncodedServed,
    ) -> Result<(), redb::StorageError> {
        self.index.insert(name, encoded.index.as_slice())?;
        for (table, doc) in self.docs.iter_mut().zip(&encoded.docs) {
            table.insert(name, doc.as_slice())?;
        }
        Ok(())
    }

    /// Removes every served value of `name` (a tombstone: reads answer 404).
    pub(crate) fn remove(&mut self, name: &str) -> Result<(), redb::StorageError> {
        self.index.remove(name)?;
        for table in &mut self.docs {
            table.remove(name)?;
        }
        Ok(())
    }
}
