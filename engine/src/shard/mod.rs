//! Shards: a package belongs to exactly one shard, chosen by `shard_for` from the xxh3 of its
//! canonical name. The shard count is fixed when a data directory is created and stored with
//! the data (`data_dir`), so reopening on a machine with a different core count still finds
//! every package. `shard_for` is the only router.

mod reader;
mod store;
pub(crate) mod tables;

pub use reader::ShardReader;
pub use store::{BatchPhases, FreeSpace, ReadError, ShardStore, WriteError, WriteOp, WriteOutcome};

/// Begins a write transaction that commits in two phases: the new pages are written and
/// fsynced, then the header that points at them is written and fsynced.
///
/// redb's default one-phase commit writes pages and header from one buffer in no fixed order
/// and fsyncs once, relying on checksums to recognise a torn commit. A process killed in the
/// middle of that write (no power loss needed) then leaves a newest commit whose pages are
/// missing: never acknowledged, rolled back by the next open, but reported by an offline fsck
/// as a commit that "fails its checksums", indistinguishable from damage. Commits grew when
/// small tarballs moved into the shards, and the kill -9 harness hit that window. With two
/// phases a kill cannot tear a commit, so a checksum failure always means damage. It costs
/// one more fsync per group commit, which is shared by every op in the group.
///
/// # Errors
/// redb's, from `begin_write`.
pub(crate) fn begin_durable_write(
    db: &redb::Database,
) -> Result<redb::WriteTransaction, redb::TransactionError> {
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    Ok(txn)
}

/// The index of a shard, `0..shard_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// The shard that owns package `name`: `xxh3_64(name) % shard_count`.
///
/// # Panics
/// When `shard_count` is 0 (a data directory always has at least one shard).
#[must_use]
pub fn shard_for(name: &str, shard_count: u16) -> ShardId {
    assert!(shard_count > 0, "shard_count must be at least 1");
    let index = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % u64::from(shard_count);
    ShardId(u16::try_from(index).expect("index < shard_count <= u16::MAX"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stable_values() {
        // These values are data: changing the router would strand stored packages.
        assert_eq!(shard_for("express", 1), ShardId(0));
        let first = shard_for("express", 8);
        assert_eq!(first, shard_for("express", 8));
        assert_eq!(
            u64::from(first.0),
            xxhash_rust::xxh3::xxh3_64(b"express") % 8,
        );
    }

    proptest! {
        #[test]
        fn in_range_and_stable(name in ".{0,64}", count in 1u16..=512) {
            let shard = shard_for(&name, count);
            prop_assert!(shard.0 < count);
            prop_assert_eq!(shard, shard_for(&name, count));
        }
    }
}
