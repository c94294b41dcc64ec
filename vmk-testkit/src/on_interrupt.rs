//! What an interrupted test binary must still undo besides its qemus (those are
//! [`crate::qemu_guard`]'s): daemons a fixture started, such as a test's own libvirtd with
//! its domains, or a loop-mounted filesystem. An interrupted binary runs no destructor, so
//! a fixture registers its undo here while it lives, and the system-test harness runs
//! every registered undo on SIGINT, SIGTERM or SIGHUP.

use std::sync::Mutex;

type Undo = Box<dyn Fn() + Send>;

/// The registered undos, by the id of the [`Registration`] that holds each.
static UNDOS: Mutex<Vec<(u64, Undo)>> = Mutex::new(Vec::new());

fn undos() -> std::sync::MutexGuard<'static, Vec<(u64, Undo)>> {
    UNDOS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An undo registered with [`register`]; dropping it unregisters the undo (the fixture
/// then cleans up itself).
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        undos().retain(|(id, _)| *id != self.id);
    }
}

/// Runs `undo` should the test binary be interrupted while the returned registration lives.
pub fn register(undo: impl Fn() + Send + 'static) -> Registration {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    undos().push((id, Box::new(undo)));
    Registration { id }
}

/// Runs every registered undo (the harness, on an interrupt); returns how many ran.
pub fn run_all() -> usize {
    let taken: Vec<(u64, Undo)> = std::mem::take(&mut *undos());
    for (_, undo) in &taken {
        undo();
    }
    taken.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn only_live_registrations_run() {
        let ran = Arc::new(AtomicUsize::new(0));
        let count = |n: usize| {
            let ran = Arc::clone(&ran);
            move || {
                ran.fetch_add(n, Ordering::SeqCst);
            }
        };
        let kept = register(count(1));
        drop(register(count(10)));
        // other tests of this binary do not register: this is the whole list
        assert_eq!(run_all(), 1);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(run_all(), 0, "each undo runs once");
        drop(kept);
    }
}
