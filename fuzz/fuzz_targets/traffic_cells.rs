//! The cell table under arbitrary changes, against a model of slots and
//! pinned keys: a bad change is an error that changes nothing, and every
//! key is routed where the model says.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use palisade_traffic::{AsKey, Cells, SLOTS, slot_of};

fuzz_target!(|changes: Vec<(u8, u16, u16, u8)>| {
    let cells = Cells::new([("c0", ())]).unwrap();
    let mut names = vec!["c0".to_owned()];
    let mut slots = vec![0_usize; usize::from(SLOTS)];
    let mut pinned: HashMap<u64, usize> = HashMap::new();
    for (kind, a, b, cell) in changes.into_iter().take(64) {
        let cell = usize::from(cell);
        match kind % 4 {
            0 => {
                let name = format!("c{}", names.len());
                if cells.add(&name, ()).is_ok() {
                    names.push(name);
                }
            }
            1 => {
                let name = names
                    .get(cell % (names.len() + 1))
                    .cloned()
                    .unwrap_or_default();
                let valid = a < b && b <= SLOTS && !name.is_empty();
                assert_eq!(
                    cells.assign(a..b, &name).is_ok(),
                    valid,
                    "{a}..{b} to {name:?}"
                );
                if valid {
                    slots[usize::from(a)..usize::from(b)].fill(cell % (names.len() + 1));
                }
            }
            2 => {
                let key = u64::from(a % 64);
                if let Some(name) = names.get(cell % names.len()) {
                    cells.pin(key, name).unwrap();
                    pinned.insert(key, cell % names.len());
                }
            }
            _ => {
                let key = u64::from(a % 64);
                cells.unpin(key);
                pinned.remove(&key);
            }
        }
        for key in 0_u64..64 {
            let expected = pinned
                .get(&key)
                .copied()
                .unwrap_or(slots[usize::from(slot_of(key.key_hash()))]);
            assert_eq!(
                cells.cell_of(key).as_deref(),
                Some(names[expected].as_str())
            );
        }
    }
});
