//! Repairs: served records, revs and manifest rows re-derived from the package records, temp
//! files deleted, orphan blob files deleted behind the write barrier, inline orphans deleted
//! in their shard's write transaction (see `fsck/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::PathBuf;

use redb::{Database, ReadableTable};

use super::{Ctx, Report, Scan};
use crate::blob::BlobId;
use crate::packument::StoredPackage;
use crate::served::{decode_index, encode_served};
use crate::shard::tables::{
    adjust_inline_bytes, fill_manifests, manifest_key, manifest_keys_of, remove_inline, InlineKey,
    ServedTables,
};
use crate::shard::ShardStore;

/// Re-renders served records and rebuilds revs, one write transaction per shard. Each package
/// is re-read inside the transaction: a writer may have changed it since the scan.
pub(super) fn repair_served(ctx: &Ctx<'_>, scan: &Scan, report: &mut Report) {
    for (shard, fixes) in ctx.shards.iter().zip(&scan.fixes) {
        if fixes.is_empty() {
            continue;
        }
        let Some(base_url) = &shard.base_url else {
            report.notes.push(format!(
                "shard {} records no base URL: its served records were not re-rendered",
                shard.id.0
            ));
            continue;
        };
        match rewrite_served(shard.db, shard.store, base_url, fixes.keys()) {
            Ok(done) => {
                for (name, what) in done {
                    for &index in &fixes[&name] {
                        report.repaired(index, what);
                    }
                }
            }
            Err(e) => report.notes.push(format!(
                "repairing shard {} failed (nothing was changed in it): {e}",
                shard.id.0
            )),
        }
    }
}

/// Online (`store` is the serving shard), the commit goes through `commit_visible`, so the
/// cores' caches see it as they see the writer's.
fn rewrite_served<'n>(
    db: &Database,
    store: Option<&ShardStore>,
    base_url: &str,
    names: impl Iterator<Item = &'n String>,
) -> Result<Vec<(String, &'static str)>, redb::Error> {
    let txn = crate::shard::begin_durable_write(db)?;
    let mut done = Vec::new();
    {
        let mut packages = txn.open_table(ShardStore::TABLE_PACKAGES)?;
        let mut manifests = txn.open_table(ShardStore::TABLE_MANIFESTS)?;
        let mut served = ServedTables::open(&txn)?;
        let mut revs = txn.open_table(ShardStore::TABLE_REVS)?;
        let mut packages_out = Vec::new();
        for name in names {
            let record = packages.get(name.as_str())?.map(|v| v.value().to_vec());
            let decoded = record.map(|r| {
                let mut stored = StoredPackage::decode(&r).map_err(|e| e.to_string())?;
                fill_manifests(Some(&manifests), name, &mut stored)?;
                Ok::<_, String>(stored)
            });
            let stored = match decoded {
                // A corrupt record is reported on its own; its derived records stay.
                Some(Err(_)) => continue,
                Some(Ok(stored)) => Some(stored),
                None => None,
            };
            match stored.filter(|s| s.versions().is_some_and(|v| !v.is_empty())) {
                Some(mut stored) => {
                    // A new revision, so cores holding the stale record reload it instead of
                    // revalidating it by an unchanged revision.
                    stored.rev += 1;
                    packages_out.push((name.clone(), stored.encode_split()));
                    served.put(name.as_str(), &encode_served(&stored, base_url))?;
                    revs.insert(name.as_str(), stored.rev)?;
                    done.push((name.clone(), "re-rendered from the package record"));
                }
                None => {
                    served.remove(name.as_str())?;
                    revs.remove(name.as_str())?;
                    // No live version: no manifest row is named (an unpublished package's
                    // record names none either).
                    let keys = manifest_keys_of(name);
                    manifests.retain_in(keys.start.as_str()..keys.end.as_str(), |_, _| false)?;
                    done.push((name.clone(), "removed (no live package)"));
                }
            }
        }
        for (name, (bytes, rows)) in packages_out {
            let keys = manifest_keys_of(&name);
            manifests.retain_in(keys.start.as_str()..keys.end.as_str(), |_, _| false)?;
            for (version, row) in rows {
                manifests.insert(manifest_key(&name, &version).as_str(), row.as_slice())?;
            }
            packages.insert(name.as_str(), bytes.as_slice())?;
        }
    }
    match store {
        Some(store) => store.commit_visible(txn)?,
        None => txn.commit()?,
    }
    Ok(done)
}

pub(super) fn repair_temp_files(temps: &[(PathBuf, usize)], report: &mut Report) {
    for (path, index) in temps {
        match fs::remove_file(path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
                report.repaired(*index, "deleted");
            }
            Err(e) => report
                .notes
                .push(format!("deleting {} failed: {e}", path.display())),
        }
    }
}

/// Deletes orphan blobs behind the write barrier described at the top of this file.
pub(super) fn repair_orphans(ctx: &Ctx<'_>, orphans: &[(BlobId, usize)], report: &mut Report) {
    if orphans.is_empty() {
        return;
    }
    let results = match references_under_barrier(ctx, |referenced| {
        orphans
            .iter()
            .filter(|(id, _)| !referenced.contains(id))
            .map(|(id, index)| (*index, ctx.blobs.remove_unreferenced(id)))
            .collect::<Vec<_>>()
    }) {
        Ok(Some(results)) => results,
        Ok(None) => {
            report.notes.push(
                "orphan blobs were kept: not every shard and package record could be read".into(),
            );
            return;
        }
        Err(e) => {
            report.notes.push(format!(
                "orphan blobs were kept: taking the write barrier failed: {e}"
            ));
            return;
        }
    };
    let kept = orphans.len() - results.len();
    if kept > 0 {
        report.notes.push(format!(
            "{kept} orphan blobs were kept: a write since the check references them again"
        ));
    }
    for (index, result) in results {
        match result {
            Ok(()) => report.repaired(index, "deleted"),
            Err(e) => report.notes.push(format!("deleting an orphan failed: {e}")),
        }
    }
}

/// Deletes inline orphans (view index, where the shard keeps it, finding index), one write
/// transaction per shard that re-reads the shard's references first: a commit since the
/// check may name one again.
pub(super) fn repair_inline_orphans(
    ctx: &Ctx<'_>,
    orphans: &[(usize, InlineKey, usize)],
    report: &mut Report,
) {
    for (view, shard) in ctx.shards.iter().enumerate() {
        let candidates: Vec<(InlineKey, usize)> = orphans
            .iter()
            .filter(|(v, _, _)| *v == view)
            .map(|(_, id, index)| (*id, *index))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        match delete_inline_unreferenced(shard.db, &candidates) {
            Ok(Some(deleted)) => {
                let kept = candidates.len() - deleted.len();
                if kept > 0 {
                    report.notes.push(format!(
                        "{kept} inline orphans of shard {} were kept: a write since the check \
                         references them again",
                        shard.id.0
                    ));
                }
                for index in deleted {
                    report.repaired(index, "deleted");
                }
            }
            Ok(None) => report.notes.push(format!(
                "inline orphans of shard {} were kept: a package record could not be read",
                shard.id.0
            )),
            Err(e) => report.notes.push(format!(
                "deleting inline orphans of shard {} failed (nothing was changed in it): {e}",
                shard.id.0
            )),
        }
    }
}

/// Removes each candidate the shard's records do not name from `inline_rows` or
/// `blob_inline`, in one committed write transaction; returns the finding indices of those
/// removed, or `None` (and nothing changed) when a record did not decode.
fn delete_inline_unreferenced(
    db: &Database,
    candidates: &[(InlineKey, usize)],
) -> Result<Option<Vec<usize>>, redb::Error> {
    let txn = crate::shard::begin_durable_write(db)?;
    let mut deleted = Vec::new();
    {
        let packages = txn.open_table(ShardStore::TABLE_PACKAGES)?;
        let served = txn.open_table(ShardStore::TABLE_SERVED)?;
        let mut referenced = Named::default();
        if !collect_references(&packages, &served, &mut referenced)? {
            return Ok(None);
        }
        let mut rows = txn.open_table(ShardStore::TABLE_INLINE_ROWS)?;
        let mut legacy = None;
        let mut removed = 0u64;
        for (key, index) in candidates {
            let named = match key {
                InlineKey::Row(row) => referenced.rows.contains_key(row),
                InlineKey::Id(id) => referenced.ids.contains(id),
            };
            if named {
                continue;
            }
            if let Some(len) = remove_inline(&txn, &mut rows, &mut legacy, *key)? {
                removed += len;
                deleted.push(*index);
            }
        }
        drop((rows, legacy));
        let mut meta = txn.open_table(ShardStore::TABLE_META)?;
        adjust_inline_bytes(&mut meta, 0, removed)?;
    }
    txn.commit()?;
    Ok(Some(deleted))
}

/// Holds every shard's write transaction, collects every blob any package record or served
/// record names, runs `act` on that set, then aborts the transactions. `None` (and `act` not
/// run) when a record could not be read, as nothing can then be proven unreferenced.
fn references_under_barrier<T>(
    ctx: &Ctx<'_>,
    act: impl FnOnce(&BTreeSet<BlobId>) -> T,
) -> Result<Option<T>, redb::Error> {
    if !ctx.all_shards_open {
        return Ok(None);
    }
    let mut txns = Vec::with_capacity(ctx.shards.len());
    for shard in &ctx.shards {
        txns.push(crate::shard::begin_durable_write(shard.db)?);
    }
    let mut referenced = Named::default();
    let mut complete = true;
    for txn in &txns {
        let packages = txn.open_table(ShardStore::TABLE_PACKAGES)?;
        let served = txn.open_table(ShardStore::TABLE_SERVED)?;
        complete &= collect_references(&packages, &served, &mut referenced)?;
    }
    let result = complete.then(|| act(&referenced.ids));
    for txn in txns {
        txn.abort()?;
    }
    Ok(result)
}

/// The blobs records name: every id, and the inline rows with the id each holds.
#[derive(Default)]
pub(crate) struct Named {
    pub(crate) ids: BTreeSet<BlobId>,
    pub(crate) rows: BTreeMap<u64, BlobId>,
}

/// Adds every blob named by `packages` and `served` to `out`; false when a record did not
/// decode (its references are unknown).
pub(crate) fn collect_references(
    packages: &impl ReadableTable<&'static str, &'static [u8]>,
    served: &impl ReadableTable<&'static str, &'static [u8]>,
    out: &mut Named,
) -> Result<bool, redb::StorageError> {
    let mut complete = true;
    for entry in packages.iter()? {
        let (_, value) = entry?;
        match StoredPackage::decode(value.value()) {
            Ok(stored) => {
                for tarball in stored.tarballs.values() {
                    match tarball.blob_id() {
                        Some(id) => {
                            out.ids.insert(id);
                            if let Some(row) = tarball.row {
                                out.rows.insert(row, id);
                            }
                        }
                        None => complete = false,
                    }
                }
            }
            Err(_) => complete = false,
        }
    }
    for entry in served.iter()? {
        let (_, value) = entry?;
        // A served record that does not decode names nothing that can be served.
        if let Ok(decoded) = decode_index(value.value()) {
            for tarball in &decoded.tarballs {
                out.ids.insert(tarball.blob);
                if let Some(row) = tarball.row {
                    out.rows.insert(row, tarball.blob);
                }
            }
        }
    }
    Ok(complete)
}
