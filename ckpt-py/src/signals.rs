//! Keeping the core's signal handlers installed next to Python's `signal` module.
//!
//! The core installs its handlers through signal-hook, once per signal and process: a C-level handler
//! that sets the checkpointer's flag and chains to whatever handler was there before. Python's
//! `signal.signal()` replaces the C-level handler of a signal with the interpreter's own; signal-hook
//! never installs its handler again (it believes it still is installed). So this module remembers the
//! `sigaction` signal-hook installed for each signal, and can put it back
//! (`ckpt.install_signal_handlers()`), chaining to the interpreter's handler, which runs whatever
//! Python-level handler is current.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

/// The `sigaction` signal-hook installed, per signal.
static HOOKS: Mutex<BTreeMap<i32, libc::sigaction>> = Mutex::new(BTreeMap::new());

fn hooks() -> std::sync::MutexGuard<'static, BTreeMap<i32, libc::sigaction>> {
    HOOKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The current disposition of `signal`.
pub fn current(signal: i32) -> io::Result<libc::sigaction> {
    // SAFETY: sigaction with a NULL new action only reads the disposition into `old`, a zeroed C struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(old)
    }
}

/// The dispositions of `signals` now (taken before creating a core checkpointer).
pub type Snapshot = Vec<(i32, libc::sigaction)>;

/// Per signal, the core checkpointers handling it that are open (created and not yet closed).
static OPEN: Mutex<BTreeMap<i32, usize>> = Mutex::new(BTreeMap::new());

fn open_counts() -> std::sync::MutexGuard<'static, BTreeMap<i32, usize>> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// The dispositions of `signals` now (call before creating a core checkpointer).
pub fn snapshot(signals: &[i32]) -> Snapshot {
    signals.iter().filter_map(|&s| current(s).ok().map(|a| (s, a))).collect()
}

/// After a core checkpointer was created: remembers the handlers signal-hook has just installed, and
/// re-installs those it installed earlier and that were replaced since (by Python's `signal.signal`, or
/// by [`after_close`]).
pub fn after_create(before: &Snapshot) {
    {
        let mut open = open_counts();
        for (signal, _) in before {
            *open.entry(*signal).or_insert(0) += 1;
        }
    }
    let mut hooks = hooks();
    for (signal, old) in before {
        let signal = *signal;
        let Ok(now) = current(signal) else { continue };
        if now.sa_sigaction != old.sa_sigaction {
            // signal-hook installed its handler just now (first registration of this signal).
            hooks.insert(signal, now);
        } else if let Some(hook) = hooks.get(&signal)
            && hook.sa_sigaction != now.sa_sigaction
        {
            // signal-hook's slot existed, but its handler had been replaced: put it back.
            install(signal, hook);
        }
    }
}

fn install(signal: i32, action: &libc::sigaction) -> bool {
    // SAFETY: `action` is a disposition the kernel returned for this signal earlier (signal-hook's
    // handler, a function of this process that lives until exit); installing it is what signal-hook did.
    unsafe { libc::sigaction(signal, action, std::ptr::null_mut()) == 0 }
}

/// After a core checkpointer was dropped: signal-hook leaves its handler installed with nothing to do
/// (SIGTERM would then be ignored for the rest of the process), so when the last checkpointer handling a
/// signal closes, that signal's disposition from before this checkpointer's creation comes back, wherever
/// the core's handler is still in place. A signal another open checkpointer handles keeps the core's
/// handler, whatever the order of the closes. (`ckpt.Checkpointer` then also puts the previous
/// Python-level handlers back.)
pub fn after_close(before: &Snapshot) {
    let last: Vec<i32> = {
        let mut open = open_counts();
        before
            .iter()
            .filter_map(|(signal, _)| {
                let n = open.entry(*signal).or_insert(1);
                *n = n.saturating_sub(1);
                (*n == 0).then_some(*signal)
            })
            .collect()
    };
    for (signal, old) in before {
        if last.contains(signal) && hook_installed(*signal) {
            install(*signal, old);
        }
    }
}

/// Whether the core's (signal-hook's) handler is the one installed for `signal` now.
pub fn hook_installed(signal: i32) -> bool {
    let hooks = hooks();
    match (hooks.get(&signal), current(signal)) {
        (Some(hook), Ok(now)) => hook.sa_sigaction == now.sa_sigaction,
        _ => false,
    }
}

/// Re-installs the core's handler for each of `signals` where something else replaced it; returns the
/// signals it re-installed.
pub fn reinstall(signals: &[i32]) -> Vec<i32> {
    let hooks = hooks();
    let mut done = Vec::new();
    for &signal in signals {
        let (Some(hook), Ok(now)) = (hooks.get(&signal), current(signal)) else { continue };
        if hook.sa_sigaction != now.sa_sigaction && install(signal, hook) {
            done.push(signal);
        }
    }
    done
}

/// Does nothing: the handler of an exit signal (SIGTERM) once one was handled and the checkpointer closed.
extern "C" fn do_nothing(_signal: libc::c_int) {}

/// Installs a handler that does nothing for `signal` (a function, so `exec` resets it to the default,
/// unlike `SIG_IGN`); returns whether it was installed.
pub fn absorb(signal: i32) -> bool {
    // SAFETY: a zeroed sigaction with an empty mask and a handler function that lives until exit and does
    // nothing (async-signal-safe).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = do_nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
    }
}

/// In the child of a fork: the dispositions of `before` come back wherever the core's handler is installed
/// (the child has no checkpointer: the flag-only handler would make it ignore SIGTERM).
pub fn reset_in_child(before: &Snapshot) {
    for (signal, old) in before {
        if hook_installed(*signal) {
            install(*signal, old);
        }
    }
}
