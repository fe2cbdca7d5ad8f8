//! Critical sections that defer a checkpoint: the library-entry macros
//! (`OPAL_CR_ENTER_LIBRARY` …) and `crs_disable_checkpoint`/`crs_enable_checkpoint`.
//! A checkpoint waits until no thread is inside one; a thread entering one while a
//! checkpoint runs waits until it is over. The checkpointing thread itself never waits
//! (its callbacks may call into the library).

use parking_lot::{Condvar, Mutex};
use std::cell::Cell;

struct Gate {
    in_library: u32,
    disabled: u32,
    checkpointing: bool,
}

static GATE: Mutex<Gate> = Mutex::new(Gate { in_library: 0, disabled: 0, checkpointing: false });
static CHANGED: Condvar = Condvar::new();

thread_local! {
    static IS_CHECKPOINT_THREAD: Cell<bool> = const { Cell::new(false) };
}

pub fn enter_library() {
    if IS_CHECKPOINT_THREAD.with(Cell::get) {
        return;
    }
    let mut gate = GATE.lock();
    while gate.checkpointing {
        CHANGED.wait(&mut gate);
    }
    gate.in_library += 1;
}

pub fn exit_library() {
    if IS_CHECKPOINT_THREAD.with(Cell::get) {
        return;
    }
    let mut gate = GATE.lock();
    gate.in_library = gate.in_library.saturating_sub(1);
    if gate.in_library == 0 {
        CHANGED.notify_all();
    }
}

pub fn disable_checkpoint() {
    GATE.lock().disabled += 1;
}

pub fn enable_checkpoint() {
    let mut gate = GATE.lock();
    gate.disabled = gate.disabled.saturating_sub(1);
    if gate.disabled == 0 {
        CHANGED.notify_all();
    }
}

/// Whether a request taken now would have to wait.
pub fn deferred() -> bool {
    let gate = GATE.lock();
    gate.in_library > 0 || gate.disabled > 0
}

/// Held for the duration of a checkpoint; dropping it lets waiting threads go on.
pub struct CheckpointSection(());

/// Waits until no critical section is open, then marks a checkpoint as running.
pub fn begin_checkpoint() -> CheckpointSection {
    let mut gate = GATE.lock();
    while gate.in_library > 0 || gate.disabled > 0 {
        CHANGED.wait(&mut gate);
    }
    gate.checkpointing = true;
    IS_CHECKPOINT_THREAD.with(|c| c.set(true));
    CheckpointSection(())
}

impl Drop for CheckpointSection {
    fn drop(&mut self) {
        IS_CHECKPOINT_THREAD.with(|c| c.set(false));
        GATE.lock().checkpointing = false;
        CHANGED.notify_all();
    }
}
