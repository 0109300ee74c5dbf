//! DMTCP's own single-process test programs (`tests/dmtcp/`, copied from DMTCP's `test/` folder with its
//! licence), run under the shim the way DMTCP's `autotest.py` runs them: start the program, let it run,
//! checkpoint, kill, restart, three cycles, and the program must keep running without error. The rule: every
//! program either passes the three cycles or is refused at checkpoint time with a message naming the reason;
//! none may be silently wrong, hang, or crash the writer.
//!
//! Each program gets a verdict: `passed`; `refused (reason)` (a `checkpoint-refused` event and the message on
//! the program's stderr, the program still running); `skipped (reason)` (no compiler or a missing header,
//! outside CI only: under CI=true that is a failure); or FAILED with what went wrong and at which step (died,
//! hangs, no checkpoint after the signal, a writer crash, a restart error after an accepted checkpoint, output
//! that is not what an uninterrupted run prints). Per program, beyond autotest's "still running":
//! progress on stdout after every restart, the program's own error messages, counters on stdout and in a
//! data file that must continue exactly (nothing lost or repeated), and that the program's own signals are
//! not taken for checkpoint requests. [`EXPECTED`] records today's verdict of every program, known failures
//! with the item of issue 19 that covers them: the test fails when a verdict differs (a program that now
//! passes must be moved to `Pass` by hand).
//!
//! Two programs run at a time (CKPT_DMTCP_JOBS), every step has a timeout, the table is printed and written
//! to `target/dmtcp-table.md`. CKPT_DMTCP_ONLY=a,b runs only those programs; CKPT_DMTCP_KEEP=1 keeps the
//! work directories (image, log, output) of programs that did not pass.

mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// Checkpoint-kill-restart cycles per program (autotest.py's default is 2).
const CYCLES: usize = 3;
/// Timeout of one step (a checkpoint to be logged, a restart to be restored, a program to exit).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a program runs before each checkpoint and after the last restart.
const PHASE: Duration = Duration::from_millis(2500);

/// What today's shim does with a program.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Passes the three cycles.
    Pass,
    /// Refused at checkpoint time; the reason contains this text.
    Refused(&'static str),
    /// Fails today (listed, not hidden): `item` is the part of issue 19 that covers it, `symptom` a text of
    /// the observed failure, or several separated by `|` (another failure is a change to look at, and to
    /// record here).
    Fails { item: &'static str, symptom: &'static str },
    /// Any of these: the outcome depends on the moment the checkpoint lands in the program's loop (a thread,
    /// a descriptor it holds for an instant).
    OneOf(&'static [Expect]),
}

use Expect::*;

/// Issue 19's items, as the known failures cite them.
/// The restarted process has another pid (no pid virtualization): a program that compares a pid it
/// read before the checkpoint with one read after sees them differ (syscall-tester: `getpid()` against
/// `syscall(SYS_getpid)` with the checkpoint landing between them). Values it holds for itself keep
/// naming it (src/pid.rs); the numbers themselves change.
const PID_CHANGES: &str = "issue 19: the pid changes at restart (a pid read before, compared after)";
/// Seen once each in CI (2026-12-06): realpath() returned NULL after restart 2 (abort), and syscall-tester
/// was killed by SIGSEGV after restart 1; hundreds of cycles here never reproduced either. The likely cause
/// was found and fixed since: the restorer could leave the kernel's program break above the restored
/// heap's end (when the restarting process's own heap had grown past it), so a later `sbrk` left a hole
/// under the memory it returned (tests/heap.rs fails on the code before the fix). Kept as possible
/// outcomes until CI has stayed clean; the harness prints the kernel's fault line if one happens again.
const UNEXPLAINED_ABORT: &str = "issue 19: an abort after restart 2 seen once in CI (likely the program break, fixed)";
const UNEXPLAINED_SEGV: &str = "issue 19: a SIGSEGV after restart 1 seen once in CI (likely the program break, fixed)";

/// Today's verdicts (measured on main; the README's table). The second restart, the writer after a
/// restart and resource limits are fixed (issue 19); the known failures below are what remains.
const EXPECTED: &[(&str, Expect)] = &[
    ("dmtcp1", Pass),
    ("dmtcp2", Pass),
    // Ten threads (threads.rs: stopped, saved, recreated).
    ("dmtcp3", Pass),
    // Owns SIGUSR1 (blocks it, handles it): checkpointed through the reserved signal.
    ("dmtcp4", Pass),
    // Its own SIGUSR1 reaches its handler; the harness's checkpoint (reserved signal) takes its child
    // with it (process trees, tree.rs).
    ("dmtcp5", Pass),
    // Refused for its deleted file (it also holds /proc/self/exe open: the executable, reopened by path).
    ("file1", Refused("deleted file")),
    ("file2", Refused("deleted file")),
    ("file3", Pass),
    ("gettid", Pass),
    ("stat", Pass),
    ("mmap1", Pass),
    ("mremap", Pass),
    ("zeropages", Pass),
    ("alarm", Pass),
    ("environ", Pass),
    ("realpath", OneOf(&[Pass, Fails { item: UNEXPLAINED_ABORT, symptom: "killed by signal 6" }])),
    ("sigchild", Pass),
    // Its loop holds /proc/PID/fd open (restored as /proc/self/fd) or a deleted temporary file (refused)
    // for moments; its getpid() test compares a pid read before the checkpoint with one read after.
    (
        "syscall-tester",
        OneOf(&[
            Pass,
            Refused("deleted file"),
            Fails { item: PID_CHANGES, symptom: "getpid() returned" },
            Fails { item: UNEXPLAINED_SEGV, symptom: "killed by signal 11" },
        ]),
    ),
    // The checkpoints nearly always land in its sleep(2), between two pipelines; one that finds `ls` or
    // `sort` running takes them with it, one that finds one exited but not reaped yet is refused.
    ("popen1", OneOf(&[Pass, Refused("zombie")])),
    ("readline", Pass),
    // poll() is resumed after the checkpoint (src/eintr.rs), in the running and the restarted process.
    ("poll", Pass),
    // A recursive mutex (mutex1) and the loader's recursive lock (dlopen1/2: dlopen/dlsym) held across the
    // checkpoint: the restored TCB keeps the checkpoint's cached tid, which glibc recorded as their owner.
    ("mutex1", Pass),
    ("dlopen1", Pass),
    ("dlopen2", Pass),
    // Its two POSIX timers are not restored yet: refused at checkpoint time (before, dropped silently).
    ("timer1", Refused("POSIX timer")),
    // The clock id it took before the checkpoint names its old pid: translated (src/pid.rs).
    ("clock", Pass),
    ("rlimit-restore", Pass),
    // Restored with MAP_NORESERVE (recorded from smaps), its untouched pages skipped with PAGEMAP_SCAN.
    ("mmap-noreserve", Pass),
    // Threads created and joined in a loop (pthread1), and six threads with mutexes and condition
    // variables (pthread2): every thread stopped, saved and recreated.
    ("pthread1", Pass),
    ("pthread2", Pass),
];

/// How the harness asks for each checkpoint.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Trigger {
    /// SIGUSR1 (checkpoint and continue), then SIGKILL once the image is logged: autotest's
    /// `dmtcp_command --checkpoint`, then `--kill`.
    Usr1ThenKill,
    /// SIGTERM (checkpoint and exit): autotest's `--kcheckpoint` (syscall-tester).
    Term,
    /// The shim's reserved checkpoint signal (SIGRTMAX-2, what `ckpt create` sends), then SIGKILL: for
    /// programs that own SIGUSR1 (install a handler for it, block it).
    ReservedThenKill,
}

/// The shim's reserved checkpoint-and-continue signal.
fn reserved_signal() -> i32 {
    libc::SIGRTMAX() - 2
}

/// What must hold while the program runs, beyond being alive (autotest's only check: the peer is connected).
#[derive(Clone, Copy, Debug)]
enum Check {
    /// Alive (the program prints nothing useful, or only in 4 KiB buffers).
    Alive,
    /// Alive, and stdout grows in every run phase (progress).
    Grows,
    /// Alive, stdout grows, and the numbers on stdout (every number, or those after `prefix` at the start of a
    /// line) are `start`, `start + step`, ... with nothing lost or repeated across restarts.
    Counter { prefix: &'static str, start: i64, step: i64 },
}

/// One of DMTCP's programs and how to run and judge it.
#[derive(Clone, Copy, Debug)]
struct Prog {
    name: &'static str,
    /// Source file in tests/dmtcp/ (.c: gcc, .cpp: g++).
    src: &'static str,
    /// Extra compiler and linker arguments.
    flags: &'static [&'static str],
    /// Shared libraries the program dlopens: (file name, -D flag), built from the same source.
    dl_libs: &'static [(&'static str, &'static str)],
    check: Check,
    /// Text on stdout or stderr by which the program reports an error.
    errors: &'static [&'static str],
    trigger: Trigger,
    /// Run phase (before each checkpoint, and after the last restart).
    phase: Duration,
    /// A file the program writes in its TMPDIR whose lines must be 0, 1, 2, ... (nothing lost or repeated).
    data_lines: Option<&'static str>,
}

const BASE: Prog = Prog {
    name: "",
    src: "",
    flags: &[],
    dl_libs: &[],
    check: Check::Alive,
    errors: &[],
    trigger: Trigger::Usr1ThenKill,
    phase: PHASE,
    data_lines: None,
};

const fn counter(start: i64, step: i64) -> Check {
    Check::Counter { prefix: "", start, step }
}

/// The programs, with the checks autotest.py's TestSpecs and the programs' own code imply.
const PROGRAMS: &[Prog] = &[
    Prog { name: "dmtcp1", src: "dmtcp1.c", check: counter(1, 1), ..BASE },
    Prog { name: "dmtcp2", src: "dmtcp2.c", errors: &["failed"], ..BASE },
    // Ten threads in a condition-variable ring; stdout is a file and printf is not flushed: alive only.
    Prog { name: "dmtcp3", src: "dmtcp3.c", flags: &["-lpthread"], errors: &["error"], ..BASE },
    // Blocks every signal but ALRM/TERM/STOP/SEGV/INT, installs handlers for USR1/USR2/ALRM in a loop: it
    // owns SIGUSR1, so the harness asks with the reserved signal (which its sigprocmask cannot block).
    Prog { name: "dmtcp4", src: "dmtcp4.c", trigger: Trigger::ReservedThenKill, ..BASE },
    // Forks once, installs its own SIGUSR1 handler and raises SIGUSR1 every second (its prints are not
    // flushed: alive only; that its own SIGUSR1 is not a checkpoint request is checked for every program).
    Prog { name: "dmtcp5", src: "dmtcp5.c", errors: &["WARNING"], trigger: Trigger::ReservedThenKill, ..BASE },
    // Holds /proc/self/exe open and writes to a file it deleted.
    Prog { name: "file1", src: "file1.c", check: counter(0, 1000), errors: &["too large"], ..BASE },
    // Writes to a file whose file and two parent directories it deleted (autotest: pre_checkpoint_delay 3 s).
    Prog { name: "file2", src: "file2.c", check: counter(0, 1000), errors: &["too large"], ..BASE },
    Prog {
        name: "file3",
        src: "file3.c",
        check: counter(1000, 1000),
        errors: &["too large"],
        data_lines: Some("file_recreate.out"),
        ..BASE
    },
    Prog { name: "gettid", src: "gettid.c", check: Check::Grows, errors: &["ERROR"], ..BASE },
    Prog { name: "stat", src: "stat.c", check: Check::Grows, ..BASE },
    Prog { name: "mmap1", src: "mmap1.c", flags: &["-ldl"], check: counter(1, 1), ..BASE },
    Prog { name: "mremap", src: "mremap.c", ..BASE },
    Prog {
        name: "zeropages",
        src: "zeropages.c",
        check: Check::Counter { prefix: "OK iter ", start: 0, step: 1 },
        errors: &["FAIL"],
        ..BASE
    },
    // alarm(15) whose handler exits 0: four phases of 2.5 s stay below 15 s of the program's time.
    Prog { name: "alarm", src: "alarm.c", ..BASE },
    Prog { name: "environ", src: "environ.c", check: Check::Grows, errors: &["not preserved"], ..BASE },
    // One dot per million realpath() calls: one every 2.5 s on the CI machine, too slow to see per phase.
    Prog { name: "realpath", src: "realpath.c", ..BASE },
    Prog { name: "sigchild", src: "sigchild.c", errors: &["SIGCHLD"], ..BASE },
    // autotest: `dmtcp_launch --checkpoint-open-files`, `--kcheckpoint` (checkpoint and kill).
    Prog {
        name: "syscall-tester",
        src: "syscall-tester.c",
        check: Check::Counter { prefix: "Beginning iteration: ", start: 1, step: 1 },
        // The pid comparison first: its line says what failed (PID_CHANGES).
        errors: &["getpid() returned", "test failed"],
        trigger: Trigger::Term,
        ..BASE
    },
    // Pipes from/to `ls *` and `sort`, closed before each sleep(2); stdout is a file (4 KiB buffer).
    Prog { name: "popen1", src: "popen1.c", errors: &["popen:", "fputc:"], ..BASE },
    // stdin is a pipe that stays open (autotest's stdin=PIPE): readline waits in read().
    Prog { name: "readline", src: "readline.c", flags: &["-Wl,--export-dynamic", "-lreadline"], ..BASE },
    // poll() on a pipe nobody writes, forever: returning at all is the failure it prints.
    Prog { name: "poll", src: "poll.c", errors: &["ERROR"], ..BASE },
    // A recursive mutex locked twice and unlocked twice in a loop (the owner is the thread id).
    Prog {
        name: "mutex1",
        src: "mutex1.c",
        flags: &["-lpthread"],
        check: Check::Grows,
        errors: &["pthread_mutex"],
        ..BASE
    },
    Prog {
        name: "dlopen1",
        src: "dlopen1.c",
        flags: &["-ldl"],
        dl_libs: &[("libdlopen-lib1.so", "-DLIB1"), ("libdlopen-lib2.so", "-DLIB2")],
        check: Check::Grows,
        errors: &["wrong answer", "dlopen failed", "Failed to chdir"],
        ..BASE
    },
    Prog {
        name: "dlopen2",
        src: "dlopen2.cpp",
        flags: &["-ldl"],
        dl_libs: &[("libdlopen-lib3.so", "-DLIB3"), ("libdlopen-lib4.so", "-DLIB4")],
        check: Check::Grows,
        errors: &["wrong answer", "dlopen failed", "Failed to chdir"],
        ..BASE
    },
    // Two POSIX timers (SIGRTMIN every 0.1 s) whose handler prints; stdout reaches the file in 4 KiB blocks.
    Prog {
        name: "timer1",
        src: "timer1.c",
        flags: &["-lrt"],
        check: Check::Grows,
        errors: &["timer_"],
        phase: Duration::from_millis(4500),
        ..BASE
    },
    Prog { name: "clock", src: "clock.c", check: Check::Grows, errors: &["clock_get"], ..BASE },
    Prog { name: "rlimit-restore", src: "rlimit-restore.c", check: Check::Grows, errors: &["reset back"], ..BASE },
    Prog {
        name: "mmap-noreserve",
        src: "mmap-noreserve.c",
        check: Check::Counter { prefix: "OK iter ", start: 0, step: 1 },
        errors: &["FAIL", "mmap:"],
        ..BASE
    },
    // Creates and joins one thread after another: one or two threads at any moment.
    Prog { name: "pthread1", src: "pthread1.c", flags: &["-lpthread"], errors: &["error", "failed"], ..BASE },
    // Six detached threads at a time, each replaced as it exits (prints not flushed: alive only).
    Prog { name: "pthread2", src: "pthread2.c", flags: &["-lpthread"], errors: &["error"], ..BASE },
];

/// A program's verdict.
#[derive(Clone, Debug)]
enum Verdict {
    Passed,
    Refused(String),
    Skipped(String),
    Failed(String),
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Refused(_) => "refused",
            Verdict::Skipped(_) => "skipped",
            Verdict::Failed(_) => "FAILED",
        }
    }
    fn text(&self) -> &str {
        match self {
            Verdict::Passed => "",
            Verdict::Refused(s) | Verdict::Skipped(s) | Verdict::Failed(s) => s,
        }
    }
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dmtcp")
}

/// Where the programs are built: `<dir>/test/<name>` (dlopen1/2 chdir to `<dir>` and open `test/lib...so`).
fn build_dir() -> PathBuf {
    target_dir().join("dmtcp-programs")
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Compiles `src` into `out` unless `out` is newer than the sources and was built with the same command.
fn compile(compiler: &str, args: &[String], src: &Path, out: &Path) -> Result<(), Verdict> {
    let stamp = out.with_extension("cmd");
    let line = format!("{compiler} {}", args.join(" "));
    let newest_src = [src.to_path_buf(), src_dir().join("dmtcp.h"), src_dir().join("protectedfds.h")]
        .iter()
        .filter_map(|p| mtime(p))
        .max();
    if let (Some(o), Some(s)) = (mtime(out), newest_src)
        && o >= s
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&line)
    {
        return Ok(());
    }
    let Some(cc) = find_on_path(compiler) else {
        let why = format!("{compiler} is not installed");
        return Err(if ci() { Verdict::Failed(why) } else { Verdict::Skipped(why) });
    };
    let tmp = out.with_extension("tmp");
    let o = Command::new(cc)
        .args(args)
        .arg("-o")
        .arg(&tmp)
        .current_dir(src_dir())
        .output()
        .map_err(|e| Verdict::Failed(format!("running {compiler}: {e}")))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let missing = err
            .lines()
            .find(|l| (l.contains("fatal error:") && l.contains("No such file")) || l.contains("cannot find -l"));
        return Err(match missing {
            Some(l) if !ci() => Verdict::Skipped(format!("cannot build: {}", l.trim())),
            _ => Verdict::Failed(format!("build failed: {line}: {}", tail(&err, 600))),
        });
    }
    std::fs::rename(&tmp, out).unwrap();
    std::fs::write(&stamp, &line).unwrap();
    Ok(())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
}

/// Builds the program (and the libraries it dlopens); returns the executable.
fn build(p: &Prog) -> Result<PathBuf, Verdict> {
    let dir = build_dir().join("test");
    std::fs::create_dir_all(&dir).unwrap();
    let compiler = if p.src.ends_with(".cpp") { "g++" } else { "gcc" };
    let src = src_dir().join(p.src);
    // DMTCP_PACKAGE_VERSION: dmtcp.h includes the configure-generated dmtcp/version.h otherwise.
    let common = ["-O2", "-w", "-I.", "-DDMTCP_PACKAGE_VERSION=\"test\""].map(String::from);
    for (lib, define) in p.dl_libs {
        let mut args = common.to_vec();
        args.extend(["-shared", "-fPIC", define, p.src].map(String::from));
        compile(compiler, &args, &src, &dir.join(lib))?;
    }
    let mut args = common.to_vec();
    args.push(p.src.into());
    args.extend(p.flags.iter().map(|s| s.to_string()));
    let exe = dir.join(p.name);
    compile(compiler, &args, &src, &exe)?;
    Ok(exe)
}

fn tail(s: &str, n: usize) -> String {
    let s = s.trim_end();
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let t = &s[start..];
    if start > 0 { format!("...{}", t.replace('\n', "\\n")) } else { t.replace('\n', "\\n") }
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("was killed by signal {s}{}", if status.core_dumped() { " (core dumped)" } else { "" }),
        _ => format!("ended: {status:?}"),
    }
}

/// For a program killed by a fault (SIGSEGV, SIGBUS, SIGILL): the kernel's log lines about its pid (the
/// faulting address, instruction pointer and mapping), so that a failure seen once in CI can be explained.
fn kernel_report(status: ExitStatus, pid: u32) -> String {
    if !matches!(status.signal(), Some(libc::SIGSEGV | libc::SIGBUS | libc::SIGILL)) {
        return String::new();
    }
    std::thread::sleep(Duration::from_millis(100));
    let Ok(o) = Command::new("dmesg").output() else { return "; dmesg: not available".into() };
    let text = String::from_utf8_lossy(&o.stdout);
    let tag = format!("[{pid}]");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&tag)).collect();
    if lines.is_empty() {
        return format!(
            "; the kernel logged nothing for pid {pid} (dmesg: {})",
            tail(&String::from_utf8_lossy(&o.stderr), 200)
        );
    }
    format!("; kernel: {}", lines[lines.len().saturating_sub(4)..].join(" | "))
}

/// The checkpoint-related events of the log: (event, reason or error).
fn checkpoint_events(dir: &Path) -> Vec<(String, String)> {
    read(&dir.join("ckpt.log"))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let e = v["event"].as_str()?.to_string();
            if !e.starts_with("checkpoint") {
                return None;
            }
            let why = v["reason"].as_str().or(v["error"].as_str()).unwrap_or("").to_string();
            Some((e, why))
        })
        .collect()
}

/// Whether `sig` is blocked and pending in process `pid` (from /proc/PID/status).
fn blocked_and_pending(pid: u32, sig: i32) -> bool {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64 << (sig - 1);
    mask("SigBlk:") & bit != 0 && (mask("SigPnd:") | mask("ShdPnd:")) & bit != 0
}

/// The numbers of a counter check, from the complete lines or tokens of `out`.
fn counter_values(out: &str, prefix: &str) -> Vec<i64> {
    if prefix.is_empty() {
        let mut tokens: Vec<&str> = out.split_whitespace().collect();
        if !out.ends_with(char::is_whitespace) {
            tokens.pop();
        }
        tokens.iter().filter_map(|t| t.parse().ok()).collect()
    } else {
        let complete = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
        complete.lines().filter_map(|l| l.strip_prefix(prefix)).filter_map(|r| r.trim().parse().ok()).collect()
    }
}

/// Checks that `values` are start, start + step, ...; describes the first departure.
fn check_sequence(values: &[i64], start: i64, step: i64) -> Result<(), String> {
    for (i, &v) in values.iter().enumerate() {
        let want = start + i as i64 * step;
        if v != want {
            let from = i.saturating_sub(3);
            let around: Vec<String> = values[from..(i + 3).min(values.len())].iter().map(|v| v.to_string()).collect();
            return Err(format!("expected {want} at position {i}, found {v} (... {} ...)", around.join(" ")));
        }
    }
    Ok(())
}

/// One program's run: the process under the shim (or restarted), its work directory.
struct Run<'a> {
    p: &'a Prog,
    exe: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// Which step we are at, for messages.
    step: String,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Run<'_> {
    fn out(&self) -> PathBuf {
        self.dir.join("out.txt")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills the program's process group (the program, its children, a writer) and reaps the program.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill has no memory effects; the group is the one this test created for the program (its
            // leader is not reaped yet, so the id is still ours).
            unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
        self.stdin = None;
    }

    fn spawn(&mut self, mut cmd: Command, stdout: Stdio, stderr: Stdio) -> Result<(), Verdict> {
        cmd.stdin(Stdio::piped()).stdout(stdout).stderr(stderr).process_group(0);
        let mut child = cmd.spawn().map_err(|e| Verdict::Failed(format!("{}: spawn: {e}", self.step)))?;
        self.stdin = child.stdin.take();
        self.child = Some(child);
        Ok(())
    }

    fn err_file(&self, name: &str) -> Stdio {
        Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(name)).unwrap())
    }

    /// What the program printed, for failure messages.
    fn outputs(&self) -> String {
        format!(
            "stdout ends {:?}; stderr ends {:?}",
            tail(&read(&self.out()), 160),
            tail(&read(&self.dir.join("err.txt")), 400)
        )
    }

    fn fail(&self, what: impl std::fmt::Display) -> Verdict {
        Verdict::Failed(format!("{}: {what}", self.step))
    }

    /// The program runs for its phase: it must stay alive, report no error and make progress.
    fn phase(&mut self) -> Result<(), Verdict> {
        let start_len = std::fs::metadata(self.out()).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        while t.elapsed() < self.p.phase {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let msg = format!(
                    "the program {}; {}{}",
                    describe(status),
                    self.outputs(),
                    kernel_report(status, self.child.as_ref().unwrap().id())
                );
                self.stop();
                return Err(self.fail(msg));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.check_output(start_len)
    }

    fn check_output(&self, start_len: u64) -> Result<(), Verdict> {
        let out = read(&self.out());
        let err = read(&self.dir.join("err.txt"));
        for e in self.p.errors {
            if let Some(line) = out.lines().chain(err.lines()).find(|l| l.contains(e)) {
                return Err(self.fail(format!("the program reports an error: {:?}", tail(line, 300))));
            }
        }
        let grew = out.len() as u64 > start_len;
        match self.p.check {
            Check::Alive => {}
            Check::Grows | Check::Counter { .. } if !grew => {
                return Err(self.fail(format!(
                    "no progress: stdout stayed at {start_len} bytes for {:.1} s (the program hangs); {}",
                    self.p.phase.as_secs_f64(),
                    self.outputs()
                )));
            }
            Check::Grows => {}
            Check::Counter { prefix, start, step } => {
                let values = counter_values(&out, prefix);
                check_sequence(&values, start, step)
                    .map_err(|e| self.fail(format!("stdout's counter does not continue exactly: {e}")))?;
            }
        }
        if let Some(name) = self.p.data_lines {
            let data = read(&self.dir.join(name));
            let complete = &data[..data.rfind('\n').map_or(0, |i| i + 1)];
            let values: Vec<i64> = complete.lines().map(|l| l.parse().unwrap_or(-1)).collect();
            if values.is_empty() {
                return Err(self.fail(format!("{name} is empty")));
            }
            check_sequence(&values, 0, 1).map_err(|e| self.fail(format!("{name} does not continue exactly: {e}")))?;
        }
        Ok(())
    }

    /// Asks for checkpoint number `n` and waits for the shim's answer (image, refusal or failure).
    fn checkpoint(&mut self, n: usize) -> Result<(), Verdict> {
        let before = checkpoint_events(&self.dir);
        if n == 1 && !before.is_empty() {
            let (e, why) = &before[0];
            return Err(self.fail(format!(
                "the program's own SIGUSR1 was taken for a checkpoint request: {} `{e}` event(s) ({why}) before \
                 the harness sent any signal, and the program's handler did not run for them",
                before.len()
            )));
        }
        let sig = match self.p.trigger {
            Trigger::Term => libc::SIGTERM,
            Trigger::Usr1ThenKill => libc::SIGUSR1,
            Trigger::ReservedThenKill => reserved_signal(),
        };
        let sig_name = match self.p.trigger {
            Trigger::Term => "SIGTERM",
            Trigger::Usr1ThenKill => "SIGUSR1",
            Trigger::ReservedThenKill => "SIGRTMAX-2",
        };
        let panics_before = read(&self.dir.join("err.txt")).matches("panicked").count();
        let pid = self.pid();
        kill(pid, sig);
        let t = Instant::now();
        let mut blocked_since: Option<Instant> = None;
        loop {
            let now = checkpoint_events(&self.dir);
            if let Some((e, why)) = now.get(before.len()) {
                match e.as_str() {
                    "checkpoint" => break,
                    "checkpoint-refused" => {
                        let err = read(&self.dir.join("err.txt"));
                        if !err.contains(&format!("cannot checkpoint: {why}")) {
                            return Err(self.fail(format!(
                                "refused ({why}) without the message on the program's stderr: {}",
                                self.outputs()
                            )));
                        }
                        // Refused: the program must go on (SIGUSR1) as if nothing happened.
                        std::thread::sleep(Duration::from_millis(300));
                        if sig != libc::SIGTERM
                            && let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap()
                        {
                            return Err(self.fail(format!("refused ({why}), then the program {}", describe(status))));
                        }
                        let at = if n == 1 { String::new() } else { format!(" (checkpoint {n})") };
                        return Err(Verdict::Refused(format!("{why}{at}")));
                    }
                    _ => return Err(self.fail(format!("checkpoint failed: {why}; {}", self.outputs()))),
                }
            }
            let err = read(&self.dir.join("err.txt"));
            if err.matches("panicked").count() > panics_before {
                // "thread ... panicked at FILE:LINE:COL:" and the message on the next line.
                let lines: Vec<&str> = err.lines().collect();
                let i = lines.iter().rposition(|l| l.contains("panicked")).unwrap_or(0);
                let panic = lines[i..(i + 2).min(lines.len())].join(" ");
                std::thread::sleep(Duration::from_millis(500));
                let logged = match checkpoint_events(&self.dir).get(before.len()) {
                    Some((e, why)) => format!("then `{e}` ({why})"),
                    None => "no checkpoint event logged".into(),
                };
                return Err(self.fail(format!("the writer crashed after {sig_name}: {}; {logged}", panic.trim())));
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // The writer may still be at work: give it a moment to log its answer.
                let grace = Instant::now();
                while checkpoint_events(&self.dir).len() == before.len() && grace.elapsed() < Duration::from_secs(3) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let now = checkpoint_events(&self.dir);
                if now.get(before.len()).is_some_and(|e| self.p.trigger == Trigger::Term || e.0 == "checkpoint-refused")
                {
                    continue; // checkpoint and exit as asked, or a refusal: judged above
                }
                let what = match now.get(before.len()) {
                    Some((e, _)) if e == "checkpoint" => "the checkpoint was written, but".to_string(),
                    Some((e, why)) => format!("`{e}` ({why}), and"),
                    None => "no checkpoint, and".into(),
                };
                let msg = format!("{what} the program {} on {sig_name}; {}", describe(status), self.outputs());
                self.stop();
                return Err(self.fail(msg));
            }
            if blocked_and_pending(pid, sig) {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    return Err(self.fail(format!(
                        "hangs: the program blocks {sig_name}, the checkpoint request stays pending (no checkpoint \
                         after {:.1} s)",
                        t.elapsed().as_secs_f64()
                    )));
                }
            }
            if t.elapsed() > STEP_TIMEOUT {
                let children = read(Path::new(&format!("/proc/{pid}/task/{pid}/children")));
                return Err(self.fail(format!(
                    "no checkpoint, refusal or failure logged within {} s of {sig_name} (child processes: [{}]); {}",
                    STEP_TIMEOUT.as_secs(),
                    children.trim(),
                    self.outputs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The image is written: end this process as the trigger says.
        match self.p.trigger {
            Trigger::Usr1ThenKill | Trigger::ReservedThenKill => {
                // autotest waits for the peers to be running again after `--checkpoint`: the program must go on
                // undisturbed by the checkpoint before it is killed.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    let msg = format!(
                        "the checkpoint was written, then the program {} (before the kill); {}",
                        describe(status),
                        self.outputs()
                    );
                    self.stop();
                    return Err(self.fail(msg));
                }
                self.stop()
            }
            Trigger::Term => {
                let t = Instant::now();
                loop {
                    if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                        if status.signal() != Some(libc::SIGTERM) {
                            let msg = format!("after the SIGTERM checkpoint the program {}", describe(status));
                            return Err(self.fail(msg));
                        }
                        break;
                    }
                    if t.elapsed() > STEP_TIMEOUT {
                        return Err(self.fail("the program did not exit after the SIGTERM checkpoint"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Reap leftovers of the group (none expected).
                self.stop();
            }
        }
        Ok(())
    }

    /// `ckpt restart --image-dir`, waiting for restart number `n` to be restored.
    fn restart(&mut self, n: usize) -> Result<(), Verdict> {
        let (ckpt, _) = tools();
        let mut cmd = command(&ckpt, &self.dir);
        cmd.args(["restart", "--image-dir", self.dir.join("img").to_str().unwrap()]);
        let (out, err) = (self.err_file(&format!("restart{n}.out")), self.err_file(&format!("restart{n}.err")));
        self.spawn(cmd, out, err)?;
        let t = Instant::now();
        loop {
            if events(&self.dir, "restored").len() >= n {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                if events(&self.dir, "restored").len() >= n {
                    return Ok(()); // phase() reports the exit
                }
                self.stop();
                let why = read(&self.dir.join(format!("restart{n}.err")));
                return Err(self.fail(format!(
                    "ckpt restart {} after an accepted checkpoint: {}",
                    describe(status),
                    tail(&why, 500)
                )));
            }
            if t.elapsed() > STEP_TIMEOUT {
                return Err(self.fail(format!(
                    "not restored within {} s (restart hangs): {}",
                    STEP_TIMEOUT.as_secs(),
                    tail(&read(&self.dir.join(format!("restart{n}.err"))), 300)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Builds and runs one program through the cycles.
fn run_program(p: &Prog) -> (Verdict, Option<PathBuf>) {
    let exe = match build(p) {
        Ok(e) => e,
        Err(v) => return (v, None),
    };
    let tmp = tempfile::Builder::new().prefix(&format!("ckpt-dmtcp-{}-", p.name)).tempdir().unwrap();
    let mut run = Run { p, exe, dir: tmp.path().to_path_buf(), child: None, stdin: None, step: "start".into() };
    let verdict = match cycles(&mut run) {
        Ok(()) => Verdict::Passed,
        Err(v) => v,
    };
    run.stop();
    drop(run);
    let keep = !matches!(verdict, Verdict::Passed) && std::env::var("CKPT_DMTCP_KEEP").as_deref() == Ok("1");
    (verdict, keep.then(|| tmp.keep()))
}

fn cycles(run: &mut Run) -> Result<(), Verdict> {
    let (ckpt, _) = tools();
    let mut cmd = command(&ckpt, &run.dir);
    cmd.args(["run", "--dir", run.dir.join("img").to_str().unwrap(), "--"])
        .arg(&run.exe)
        .current_dir(&run.dir)
        .env("TMPDIR", &run.dir);
    let (out, err) = (out_file(&run.out(), false), run.err_file("err.txt"));
    run.step = "before the first checkpoint".into();
    run.spawn(cmd, out, err)?;
    run.phase()?;
    for n in 1..=CYCLES {
        run.step = format!("checkpoint {n}");
        run.checkpoint(n)?;
        run.step = format!("restart {n}");
        run.restart(n)?;
        run.step = format!("running after restart {n}");
        run.phase()?;
    }
    Ok(())
}

fn expectation(name: &str) -> Expect {
    EXPECTED.iter().find(|(n, _)| *n == name).map(|(_, e)| *e).unwrap_or_else(|| panic!("{name}: no expectation"))
}

/// Whether a verdict is the expected one.
fn matches(v: &Verdict, e: Expect) -> bool {
    match (v, e) {
        (Verdict::Passed, Pass) => true,
        (Verdict::Refused(why), Refused(needle)) => why.contains(needle),
        (Verdict::Failed(what), Fails { symptom, .. }) => symptom.split('|').any(|s| what.contains(s)),
        (v, OneOf(any)) => any.iter().any(|e| matches(v, *e)),
        (Verdict::Skipped(_), _) => !ci(),
        _ => false,
    }
}

fn expected_text(e: Expect) -> String {
    match e {
        Pass => "pass".into(),
        Refused(n) => format!("refused ({n})"),
        Fails { item, .. } => format!("known failure: {item}"),
        OneOf(any) => any.iter().map(|e| expected_text(*e)).collect::<Vec<_>>().join(", or "),
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

#[test]
fn dmtcp_test_programs() {
    let only: Option<Vec<String>> =
        std::env::var("CKPT_DMTCP_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    for p in PROGRAMS {
        expectation(p.name);
    }
    for (n, _) in EXPECTED {
        assert!(PROGRAMS.iter().any(|p| p.name == *n), "{n}: expectation for an unknown program");
    }
    let progs: Vec<&Prog> =
        PROGRAMS.iter().filter(|p| only.as_ref().is_none_or(|o| o.iter().any(|n| n == p.name))).collect();
    tools();
    let jobs: usize = std::env::var("CKPT_DMTCP_JOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(2).max(1);
    let started = Instant::now();
    let queue = Mutex::new(progs.iter().copied().enumerate().collect::<VecDeque<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let Some((i, p)) = queue.lock().unwrap().pop_front() else { break };
                    let t = Instant::now();
                    let (verdict, kept) = run_program(p);
                    let secs = t.elapsed().as_secs_f64();
                    eprintln!("[dmtcp] {:<15} {:>5.1} s  {} {}", p.name, secs, verdict.label(), verdict.text());
                    results.lock().unwrap().push((i, verdict, secs, kept));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.0);
    let total = started.elapsed().as_secs_f64();

    let mut table = String::new();
    let mut md = String::from(
        "# DMTCP's test programs under the shim\n\n| program | verdict | reason / what went wrong | expected | s |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    let mut mismatches = Vec::new();
    for (i, verdict, secs, kept) in &results {
        let p = progs[*i];
        let e = expectation(p.name);
        let ok = matches(verdict, e);
        let mark = if ok { "" } else { "  <-- UNEXPECTED" };
        let text = match kept {
            Some(dir) => format!("{} [work dir: {}]", verdict.text(), dir.display()),
            None => verdict.text().to_string(),
        };
        writeln!(
            table,
            "{:<15} {:<8} {}{mark}\n{:<15} {:<8} expected: {}",
            p.name,
            verdict.label(),
            text,
            "",
            "",
            expected_text(e)
        )
        .unwrap();
        writeln!(
            md,
            "| {} | {} | {} | {}{} | {secs:.1} |",
            p.name,
            verdict.label(),
            md_escape(&text),
            md_escape(&expected_text(e)),
            if ok { "" } else { " **(differs)**" }
        )
        .unwrap();
        if !ok {
            mismatches.push(format!(
                "{}: {} {} (expected {})",
                p.name,
                verdict.label(),
                verdict.text(),
                expected_text(e)
            ));
        }
    }
    let count = |l: &str| results.iter().filter(|r| r.1.label() == l).count();
    let summary = format!(
        "{} programs in {total:.0} s: {} passed, {} refused, {} failed, {} skipped",
        results.len(),
        count("passed"),
        count("refused"),
        count("FAILED"),
        count("skipped")
    );
    writeln!(md, "\n{summary}").unwrap();
    println!("\nDMTCP test programs under the shim ({CYCLES} cycles each)\n{table}\n{summary}");
    let md_path = target_dir().parent().unwrap_or(&target_dir()).join("dmtcp-table.md");
    std::fs::write(&md_path, md).unwrap();
    println!("table written to {}", md_path.display());
    assert!(
        mismatches.is_empty(),
        "{} program(s) differ from their expected verdict (update EXPECTED in tests/dmtcp.rs once a change is \
         understood):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
