//! The lock record stage: what `sprites.lock` says after a run, from the plan, the
//! entries as drawing left them and the lock as the run found it.

use super::check::Entry;
use super::*;

/// The lock file after a run. An entry held back while stale keeps what the old lock
/// said (nothing when new), so its status keeps its reasons; a trained LoRA that is not
/// in the cache (no stale sprite needed it) keeps its old record too. `loras` are the
/// trained LoRAs' lookups, in plan order.
pub(super) fn record(
    plan: &Plan,
    entries: &[Entry<'_>],
    loras: &[Lookup],
    before: &LockFile,
) -> LockFile {
    let mut lock = LockFile::empty();
    for entry in entries {
        let planned = entry.planned;
        let name = &planned.spec.name;
        if entry.held && !entry.complete() {
            if let Some(old) = before.sprites.get(name) {
                lock.sprites.insert(name.clone(), old.clone());
            }
            continue;
        }
        lock.files.extend(
            planned
                .files
                .iter()
                .map(|(file, hash)| (file.lock_key(), hash.clone())),
        );
        let outputs = entry
            .lookups
            .iter()
            .map(|lookup| match lookup {
                Lookup::Hit { output } => output.to_hex().to_string(),
                _ => String::new(),
            })
            .collect();
        lock.sprites.insert(
            name.clone(),
            LockedSprite {
                inputs: LockedSprite::inputs_of(&planned.inputs),
                keys: planned.frames.iter().map(|f| f.key.to_hex()).collect(),
                outputs,
            },
        );
    }
    for (planned, lookup) in plan.loras.iter().zip(loras) {
        let name = &planned.spec.name;
        match lookup {
            Lookup::Hit { output } => {
                lock.files.extend(
                    planned
                        .files
                        .iter()
                        .map(|(file, hash)| (file.lock_key(), hash.clone())),
                );
                lock.trained_loras.insert(
                    name.clone(),
                    LockedLora {
                        key: planned.key.to_hex(),
                        inputs: planned.inputs.clone(),
                        output: output.to_hex().to_string(),
                    },
                );
            }
            _ => {
                if let Some(old) = before.trained_loras.get(name) {
                    lock.trained_loras.insert(name.clone(), old.clone());
                }
            }
        }
    }
    lock
}
