//! Properties of the built library that reviews cannot keep true by themselves: what it exports, and that
//! the part of the restorer that runs while the address space is being replaced never calls into libc.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

use common::tools;

fn objdump_available() -> bool {
    Command::new("objdump").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn exports_only_the_interposed_signal_functions() {
    let (_, lib) = tools();
    let o = Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("nm");
    assert!(o.status.success());
    let names: BTreeSet<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let expected: BTreeSet<String> = [
        "__sysv_signal",
        "bsd_signal",
        "sigaction",
        "signal",
        "sigset",
        "sysv_signal",
        // Never block the reserved checkpoint signals.
        "pthread_sigmask",
        "sigprocmask",
        // Resumed after a checkpoint instead of failing with EINTR (src/eintr.rs).
        "clock_nanosleep",
        "epoll_pwait",
        "epoll_wait",
        "nanosleep",
        "poll",
        "ppoll",
        "pselect",
        "select",
        "sleep",
        "usleep",
        // The pthread calls that hand a thread's cached tid to the kernel (src/tid.rs).
        "pthread_getaffinity_np",
        "pthread_getattr_np",
        "pthread_getcpuclockid",
        "pthread_getschedparam",
        "pthread_getname_np",
        "pthread_kill",
        "pthread_setname_np",
        "pthread_setaffinity_np",
        "pthread_setschedparam",
        "pthread_setschedprio",
        "pthread_sigqueue",
        // A pid or CPU clock id of an earlier incarnation keeps naming the process (src/pid.rs).
        "clock_getcpuclockid",
        "clock_getres",
        "clock_gettime",
        "kill",
        "sigqueue",
        "tgkill",
        // A process group of an earlier incarnation keeps naming the process's group (src/pid.rs).
        "killpg",
        // The pids of a restored process tree as the program knows them (src/pid.rs).
        "getppid",
        "wait",
        "wait3",
        "wait4",
        "waitid",
        "waitpid",
        "popen",
        "pclose",
        "system",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected, "libckpt_preload.so must export exactly the interposed functions");
}

/// Every function reachable by direct calls from the address-space replacement, skipping panic paths
/// (reached only by a bug, and then the process is lost anyway), must make no call through the PLT and
/// no indirect call.
#[test]
fn restorer_calls_no_libc() {
    if !objdump_available() {
        eprintln!("SKIP: objdump not installed");
        return;
    }
    let (_, lib) = tools();
    let o = Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(&lib).output().expect("objdump");
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    // Calls through the GOT to functions of this library use slots with a RELATIVE relocation.
    let relocs = Command::new("objdump").arg("-R").arg(&lib).output().expect("objdump -R");
    let mut relative: BTreeMap<u64, u64> = BTreeMap::new();
    for l in String::from_utf8_lossy(&relocs.stdout).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3
            && f[1] == "R_X86_64_RELATIVE"
            && let (Ok(slot), Some(Ok(target))) =
                (u64::from_str_radix(f[0], 16), f[2].strip_prefix("*ABS*+0x").map(|t| u64::from_str_radix(t, 16)))
        {
            relative.insert(slot, target);
        }
    }
    let mut by_addr: BTreeMap<u64, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_suffix(">:")
            && let Some((addr, name)) = rest.split_once(" <")
            && let Ok(a) = u64::from_str_radix(addr.trim(), 16)
        {
            by_addr.insert(a, name.to_string());
        }
    }
    // function name -> (direct call targets, offending instructions)
    let mut funcs: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_suffix(">:") {
            if let Some((_, name)) = rest.split_once(" <") {
                current = Some(name.to_string());
                funcs.entry(name.to_string()).or_default();
            }
            continue;
        }
        let Some(f) = &current else { continue };
        let insn = line.split('\t').skip(1).collect::<Vec<_>>().join(" ");
        let is_call = insn.starts_with("call") || insn.starts_with("jmp");
        if !is_call {
            continue;
        }
        let entry = funcs.get_mut(f).unwrap();
        if insn.contains('*') {
            // `call *slot(%rip)  # <slot address> <...>`: internal when the slot is relocated RELATIVE.
            let slot = insn
                .split('#')
                .nth(1)
                .and_then(|c| c.split_whitespace().next())
                .and_then(|a| u64::from_str_radix(a, 16).ok());
            match slot.and_then(|s| relative.get(&s)).and_then(|t| by_addr.get(t)) {
                Some(target) => entry.0.push(target.clone()),
                None => entry.1.push(insn.clone()),
            }
        } else if insn.contains("@plt") {
            entry.1.push(insn.clone());
        } else if let (Some(a), Some(b)) = (insn.find('<'), insn.rfind('>')) {
            let target = &insn[a + 1..b];
            let target = target.split('+').next().unwrap_or(target);
            if target != f {
                entry.0.push(target.to_string());
            }
        }
    }
    let root = funcs
        .keys()
        .find(|k| k.contains("7restore21replace_address_space"))
        .cloned()
        .expect("replace_address_space in the symbol table");
    let is_panic_path = |n: &str| {
        [
            "panic",
            "unwrap_failed",
            "expect_failed",
            "core::fmt",
            "slice_index",
            "slice_start_index",
            "slice_end_index",
            "str_index",
            "precondition_check",
            "ub_checks",
            "abort",
            "assert_failed",
        ]
        .iter()
        .any(|p| n.contains(p))
    };
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([root.clone()]);
    let mut offences = Vec::new();
    while let Some(f) = queue.pop_front() {
        if !seen.insert(f.clone()) || is_panic_path(&f) {
            continue;
        }
        let Some((calls, bad)) = funcs.get(&f) else { continue };
        for b in bad {
            offences.push(format!("{f}: {b}"));
        }
        for c in calls {
            queue.push_back(c.clone());
        }
    }
    assert!(seen.len() > 1, "the call graph was not found ({root})");
    assert!(offences.is_empty(), "calls out of the shim while the address space is replaced:\n{}", offences.join("\n"));
}
