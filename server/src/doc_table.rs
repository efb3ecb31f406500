//! The table of one cache segment's documents of one kind: open addressing with linear
//! probing over slots that hold the name's hash, so a lookup's first read is the slot itself
//! (a Swiss table reads its control bytes first, then the slot: two misses in a row when
//! neither is in the CPU's caches). Because the slot a hash starts at is known from the hash
//! alone, a core can prefetch it while it still parses and routes the request
//! (`DocTable::prefetch`). At most half the slots are used, so a lookup nearly always ends at
//! its first slot or the next. Removal shifts the following run back (no tombstones).

use crate::cache::CachedDoc;

/// A document in a table.
pub(crate) struct DocSlot {
    pub(crate) hash: u64,
    pub(crate) generation: u64,
    pub(crate) doc: CachedDoc,
}

impl DocSlot {
    /// The hash is compared first, from the slot; the name only on a hash match, from the
    /// document's first line (fetched with the lines after it, `CachedDoc::touch`).
    pub(crate) fn is(&self, hash: u64, name: &str) -> bool {
        self.hash == hash && {
            self.doc.touch();
            self.doc.name() == name.as_bytes()
        }
    }
}

/// Slots in a table that has any (a power of two).
const MIN_SLOTS: usize = 16;

#[derive(Default)]
pub(crate) struct DocTable {
    slots: Box<[Option<DocSlot>]>,
    len: usize,
}

impl DocTable {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// Where the probe for `hash` starts. The low bits: the segment was picked by the high
    /// ones.
    fn home(&self, hash: u64) -> usize {
        // Truncation is the point: only the low bits index the slots.
        #[expect(clippy::cast_possible_truncation)]
        let low = hash as usize;
        low & self.mask()
    }

    fn position(&self, hash: u64, name: &str) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut at = self.home(hash);
        loop {
            match &self.slots[at] {
                None => return None,
                Some(slot) if slot.is(hash, name) => return Some(at),
                Some(_) => at = (at + 1) & mask,
            }
        }
    }

    /// Where the slots start (an address) and the mask of their indexes, for `prefetch`.
    pub(crate) fn layout(&self) -> (usize, usize) {
        (self.slots.as_ptr().addr(), self.mask())
    }

    /// Asks the CPU to start reading the slot where the lookup of `hash` begins, in a table
    /// whose `layout` was (`base`, `mask`). Nothing is read through the address: a stale
    /// layout makes a useless prefetch, never a wrong read. An empty table (base 0 or mask
    /// `usize::MAX`) is skipped.
    pub(crate) fn prefetch(base: usize, mask: usize, hash: u64) {
        if base == 0 || mask == usize::MAX {
            return;
        }
        // Truncation is the point: only the low bits index the slots.
        #[expect(clippy::cast_possible_truncation)]
        let index = hash as usize & mask;
        let address = base.wrapping_add(index.wrapping_mul(size_of::<Option<DocSlot>>()));
        prefetch(std::ptr::without_provenance(address));
    }

    pub(crate) fn find(&self, hash: u64, name: &str) -> Option<&DocSlot> {
        let at = self.position(hash, name)?;
        self.slots[at].as_ref()
    }

    pub(crate) fn find_mut(&mut self, hash: u64, name: &str) -> Option<&mut DocSlot> {
        let at = self.position(hash, name)?;
        self.slots[at].as_mut()
    }

    /// Stores `slot` (whose name must not be in the table yet).
    pub(crate) fn insert_new(&mut self, slot: DocSlot) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.place(slot);
        self.len += 1;
    }

    /// Puts `slot` in the first free slot of its run (the table has one).
    fn place(&mut self, slot: DocSlot) {
        let mask = self.mask();
        let mut at = self.home(slot.hash);
        while self.slots[at].is_some() {
            at = (at + 1) & mask;
        }
        self.slots[at] = Some(slot);
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, (0..size).map(|_| None).collect());
        for slot in old.into_vec().into_iter().flatten() {
            self.place(slot);
        }
    }

    /// Removes the document of `name` and returns it.
    pub(crate) fn remove(&mut self, hash: u64, name: &str) -> Option<DocSlot> {
        let mut hole = self.position(hash, name)?;
        let removed = self.slots[hole].take();
        self.len -= 1;
        // Shift back every later slot of the run that may live in the hole: one whose home
        // is not cyclically after the hole.
        let mask = self.mask();
        let mut next = (hole + 1) & mask;
        while let Some(slot) = &self.slots[next] {
            let home = self.home(slot.hash);
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[next].take();
                hole = next;
            }
            next = (next + 1) & mask;
        }
        removed
    }

    /// Keeps the documents `keep` says yes to (each asked once, in slot order), then lays
    /// the kept ones out again.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&DocSlot) -> bool) {
        let size = self.slots.len();
        let old = std::mem::replace(&mut self.slots, (0..size).map(|_| None).collect());
        self.len = 0;
        for slot in old.into_vec().into_iter().flatten() {
            if keep(&slot) {
                self.place(slot);
                self.len += 1;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &DocSlot> {
        self.slots.iter().flatten()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// A hint to fetch the cache line at `address` (x86-64 `prefetcht0`; nothing elsewhere).
#[cfg(target_arch = "x86_64")]
#[expect(
    unsafe_code,
    reason = "the prefetch intrinsic is unsafe to call; measured in packument_cache/hit_100k"
)]
fn prefetch(address: *const i8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: a prefetch reads no memory architecturally and cannot fault, whatever the
    // address; SSE, which it needs, is part of the x86-64 baseline.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(address) }
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_: *const i8) {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;
    use engine::served::ServedDoc;
    use proptest::prelude::*;

    use super::*;

    fn slot(name: &str, hash: u64, rev: u64) -> DocSlot {
        let served = ServedDoc {
            rev,
            etag: Bytes::from_static(b"\"e\""),
            cut: engine::served::Cut::default(),
            body: Bytes::from_static(b"{}"),
        };
        DocSlot {
            hash,
            generation: 0,
            doc: CachedDoc::new(name, &served).unwrap(),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Remove(u8),
        Retain(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), any::<u8>()).prop_map(|(n, r)| Op::Insert(n, r)),
            2 => any::<u8>().prop_map(Op::Remove),
            1 => any::<u8>().prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// The table agrees with a map after any sequence of inserts, removals and retains,
        /// with hashes that collide a lot (16 values for 256 names) so runs are long and
        /// wrap around the end.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 0..400)) {
            let hash = |n: u8| u64::from(n % 16).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 15;
            let mut table = DocTable::default();
            let mut model: HashMap<u8, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(n, rev) => {
                        let name = format!("p{n}");
                        if let Some(old) = table.find_mut(hash(n), &name) {
                            *old = slot(&name, hash(n), u64::from(rev));
                        } else {
                            table.insert_new(slot(&name, hash(n), u64::from(rev)));
                        }
                        model.insert(n, u64::from(rev));
                    }
                    Op::Remove(n) => {
                        let removed = table.remove(hash(n), &format!("p{n}"));
                        prop_assert_eq!(removed.map(|s| s.doc.rev()), model.remove(&n));
                    }
                    Op::Retain(m) => {
                        let m = u64::from(m % 4) + 2;
                        table.retain(|s| s.doc.rev() % m != 0);
                        model.retain(|_, rev| *rev % m != 0);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(table.iter().count(), model.len());
                for n in 0..=u8::MAX {
                    let found = table.find(hash(n), &format!("p{n}")).map(|s| s.doc.rev());
                    prop_assert_eq!(found, model.get(&n).copied());
                }
            }
        }
    }

    #[test]
    fn at_most_half_full() {
        let mut table = DocTable::default();
        for n in 0..1000u64 {
            table.insert_new(slot(
                &format!("p{n}"),
                n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                n,
            ));
            assert!(table.len() * 2 <= table.slots.len());
        }
        let (base, mask) = table.layout();
        DocTable::prefetch(base, mask, 7);
        DocTable::prefetch(0, usize::MAX, 7);
    }
}
