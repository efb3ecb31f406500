//! The config record's two slots: both must decode and agree. Repair copies the sound slot
//! over the bad one under the record's write lock (the lock every config writer takes).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::report::FindingKind::ConfigSlotBad;
use super::Report;
use crate::config_record::{decode_slot, encode_slot, ConfigRecord, FILE_BYTES, SLOT_BYTES};

/// Which slot to rewrite from which.
pub(super) struct ConfigFix {
    from: usize,
    to: usize,
    finding: usize,
}

fn slot_offset(slot: usize) -> u64 {
    (slot * SLOT_BYTES) as u64
}

/// Decodes both slots of `bytes`.
fn decode_slots(bytes: &[u8]) -> [Result<ConfigRecord, String>; 2] {
    let slot = |i: usize| {
        let start = (i * SLOT_BYTES).min(bytes.len());
        let end = ((i + 1) * SLOT_BYTES).min(bytes.len());
        decode_slot(&bytes[start..end]).map_err(|e| e.to_string())
    };
    [slot(0), slot(1)]
}

/// The slot to rewrite and the one to copy, with why; `None` when both are sound and equal.
fn plan_config(slots: &[Result<ConfigRecord, String>; 2]) -> Vec<(usize, Option<usize>, String)> {
    match slots {
        [Ok(a), Ok(b)] if a == b => Vec::new(),
        [Ok(a), Ok(b)] if b.generation > a.generation => vec![(
            0,
            Some(1),
            format!(
                "slot 0 holds generation {}, slot 1 generation {} (a write was interrupted)",
                a.generation, b.generation
            ),
        )],
        [Ok(a), Ok(b)] => vec![(
            1,
            Some(0),
            format!(
                "slot 1 (generation {}) differs from slot 0 (generation {})",
                b.generation, a.generation
            ),
        )],
        [Ok(_), Err(e)] => vec![(1, Some(0), e.clone())],
        [Err(e), Ok(_)] => vec![(0, Some(1), e.clone())],
        [Err(e0), Err(e1)] => vec![(0, None, e0.clone()), (1, None, e1.clone())],
    }
}

pub(super) fn check_config(path: &Path, report: &mut Report) -> Option<ConfigFix> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            let detail = format!("cannot read the config record: {e}");
            report.push(ConfigSlotBad, path.display().to_string(), detail);
            return None;
        }
    };
    let mut fix = None;
    for (to, from, why) in plan_config(&decode_slots(&bytes)) {
        let subject = format!("{} slot {to}", path.display());
        let detail = match from {
            Some(from) => format!("{why}; slot {from} is sound"),
            None => format!("{why}; neither slot is sound: nothing to copy from"),
        };
        let finding = report.push(ConfigSlotBad, subject, detail);
        if let Some(from) = from {
            fix = Some(ConfigFix { from, to, finding });
        }
    }
    fix
}

/// Copies the sound slot over the bad one, under the record's write lock, after checking that
/// the file still needs exactly that (a config write may have happened since the check).
pub(super) fn repair_config(path: &Path, fix: &ConfigFix, report: &mut Report) {
    match rewrite_slot(path, fix) {
        Ok(true) => report.repaired(
            fix.finding,
            format!("rewrote slot {} from slot {}", fix.to, fix.from),
        ),
        Ok(false) => report.notes.push(format!(
            "{} changed since the check; its slots were left alone",
            path.display()
        )),
        Err(e) => report
            .notes
            .push(format!("repairing {} failed: {e}", path.display())),
    }
}

fn rewrite_slot(path: &Path, fix: &ConfigFix) -> io::Result<bool> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    file.lock()?;
    let result = rewrite_slot_locked(&file, fix);
    // Closing the descriptor releases the lock too; an unlock failure changes nothing.
    let _ = file.unlock();
    result
}

fn rewrite_slot_locked(file: &File, fix: &ConfigFix) -> io::Result<bool> {
    let mut bytes = vec![0u8; FILE_BYTES];
    let mut len = 0;
    while len < FILE_BYTES {
        match file.read_at(&mut bytes[len..], len as u64)? {
            0 => break,
            n => len += n,
        }
    }
    bytes.truncate(len);
    let slots = decode_slots(&bytes);
    let still = plan_config(&slots)
        .iter()
        .any(|(to, from, _)| *to == fix.to && *from == Some(fix.from));
    let Ok(source) = &slots[fix.from] else {
        return Ok(false);
    };
    if !still {
        return Ok(false);
    }
    file.write_all_at(&encode_slot(source), slot_offset(fix.to))?;
    file.sync_data()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_plan_covers_every_case() {
        let a = ConfigRecord::new("http://a", 0);
        let b = ConfigRecord { generation: 2, ..a };
        assert!(plan_config(&[Ok(a), Ok(a)]).is_empty());
        assert_eq!(plan_config(&[Ok(a), Ok(b)])[0].0, 0);
        assert_eq!(plan_config(&[Ok(b), Ok(a)])[0].0, 1);
        assert_eq!(plan_config(&[Ok(a), Err("x".into())])[0].1, Some(0));
        assert_eq!(plan_config(&[Err("x".into()), Ok(a)])[0].1, Some(1));
        assert_eq!(plan_config(&[Err("x".into()), Err("y".into())]).len(), 2);
    }
}
