//! Shared helpers of the shim's tests: locating `ckpt` and the shim, running programs under them,
//! waiting for checkpoints, and the deterministic inputs.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's target directory for this profile.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// `ckpt` and `libckpt_preload.so`, brought up to date once per test process (`cargo test` of this
/// package does not put the cdylib in the target directory).
pub fn tools() -> (PathBuf, PathBuf) {
    static TOOLS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let dir = target_dir();
            let (ckpt, lib) = (dir.join("ckpt"), dir.join("libckpt_preload.so"));
            {
                let mut cmd = Command::new(env!("CARGO"));
                cmd.args(["build", "-q", "-p", "ckpt-cli", "-p", "ckpt-preload"])
                    .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
                if dir.file_name().is_some_and(|n| n == "release") {
                    cmd.arg("--release");
                }
                assert!(cmd.status().expect("cargo build").success(), "building ckpt and the shim failed");
            }
            (ckpt, lib)
        })
        .clone()
}

/// A program on PATH (or None, and the caller skips; under CI=true a missing program fails).
/// Compiles the C program `source` to `dir/name` with `cc` (or `gcc`) and `flags`. `None` when there is no
/// compiler (a failure under `CI=true`, where every tool must be installed); a compiler error fails.
#[allow(dead_code)] // not every test binary builds C programs
pub fn build_c(dir: &Path, name: &str, source: &str, flags: &[&str]) -> Option<PathBuf> {
    let Some(cc) = which("cc").or_else(|| which("gcc")) else {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "no C compiler under CI=true");
        eprintln!("SKIP: no C compiler");
        return None;
    };
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let st = Command::new(&cc).arg("-o").arg(&exe).arg(&src).args(flags).status().unwrap();
    assert!(st.success(), "{} failed to compile {}", cc.display(), src.display());
    Some(exe)
}

pub fn which(name: &str) -> Option<PathBuf> {
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    if found.is_none() && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is not installed (.ci/run installs it)");
    }
    found
}

/// Closes descriptors above stderr in the child (a test runner may leak some, e.g. a pipe from its parent,
/// which the shim would rightly refuse to checkpoint).
pub fn close_inherited_fds(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: close_range is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
}

/// A command with the environment cleaned of CKPT_*/SLURM_* and the shim's settings for `dir`.
pub fn command(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        if ["CKPT_", "SLURM_", "LD_PRELOAD"].iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("CKPT_LOG", dir.join("ckpt.log"))
        .env("CKPT_SOCKET_DIR", dir.join("sock"))
        .env("CKPT_PRELOAD_LIB", tools().1);
    close_inherited_fds(&mut cmd);
    cmd
}

/// JSON lines of the shim's log with this `event`.
pub fn events(dir: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("ckpt.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// Waits until the log shows `count` events named `event`, or the child exits, or the timeout.
pub fn wait_for_events(dir: &Path, event: &str, count: usize, child: &mut Child, timeout: Duration) -> bool {
    wait_until(child, timeout, || events(dir, event).len() >= count)
}

/// Restores of the root process logged (each member of a process tree logs its own too).
pub fn root_restores(dir: &Path) -> usize {
    events(dir, "restored").iter().filter(|e| !e["image"].as_str().unwrap_or("").starts_with("process.member")).count()
}

/// Waits until `done()`, or the child exits (then: `done()` once more), or the timeout (then: false).
pub fn wait_until(child: &mut Child, timeout: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return done();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for a child with a timeout (killing it then).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let s = child.wait().expect("wait");
            panic!("process {} did not finish within {timeout:?} ({s:?})", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid as i32, sig) };
}

/// A small deterministic random generator (xorshift64*), seeded per test.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn between(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.unit()
    }
}

/// The seed for this run: CKPT_SHIM_SEED or the clock (printed so a failure can be replayed).
pub fn seed(name: &str) -> u64 {
    let s = std::env::var("CKPT_SHIM_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("[{name}] seed {s} (CKPT_SHIM_SEED={s} replays it)");
    s ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
}

/// Directory with the deterministic inputs, made once per test process.
pub fn inputs() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = target_dir().join("shim-test-inputs");
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text.txt");
        if !text.exists() {
            // 24 MB of word soup: compressible, but not trivially.
            let mut rng = Rng::new(1);
            let words: Vec<String> = (0..5000)
                .map(|_| {
                    let n = 2 + (rng.unit() * 8.0) as usize;
                    (0..n).map(|_| (b'a' + (rng.unit() * 10.0) as u8) as char).collect()
                })
                .collect();
            let mut s = String::with_capacity(24_000_100);
            while s.len() < 24_000_000 {
                for i in 0..12 {
                    if i > 0 {
                        s.push(' ');
                    }
                    s.push_str(&words[(rng.unit() * words.len() as f64) as usize]);
                }
                s.push('\n');
            }
            let tmp = dir.join("text.tmp");
            std::fs::write(&tmp, &s).unwrap();
            std::fs::write(dir.join("text3.txt"), &s.as_bytes()[..3_000_000]).unwrap();
            std::fs::rename(tmp, &text).unwrap();
        }
        let sparse = dir.join("sparse.bin");
        if !sparse.exists() {
            let f = File::create(&sparse).unwrap();
            f.set_len(384 << 20).unwrap();
        }
        std::fs::write(dir.join("pi.bc"), "for(i=1;i<=22;i++){scale=i*50; x=4*a(1); print i, \" \", x, \"\\n\"}\n")
            .unwrap();
        std::fs::write(
            dir.join("mandel.py"),
            "import hashlib\nh = hashlib.sha256()\nfor y in range(240):\n    row = ''\n    for x in range(160):\n        \
             c = complex(-2 + x * 0.0175, -1 + y * 0.0083); z = 0; n = 0\n        while abs(z) < 2 and n < 600:\n            \
             z = z * z + c; n += 1\n        row += chr(32 + n % 64)\n    h.update(row.encode())\n    \
             print(row, h.hexdigest()[:16], flush=True)\n",
        )
        .unwrap();
        dir
    })
    .clone()
}

/// stdout for a run: `>` (truncate) or `>>` (append).
pub fn out_file(path: &Path, append: bool) -> Stdio {
    let f = std::fs::OpenOptions::new().create(true).write(true).append(append).truncate(!append).open(path).unwrap();
    Stdio::from(f)
}

/// The distribution's python3 (/usr/bin/python3), else the one on PATH.
pub fn python() -> Option<String> {
    if Path::new("/usr/bin/python3").exists() {
        Some("/usr/bin/python3".into())
    } else {
        which("python3").map(|p| p.display().to_string())
    }
}

/// Incarnation `cycle` of the program `exe`: the first run (its output to `dir`/out.txt, images in
/// `dir`/img), or restart `cycle`, once the shim logged the restore. The restarts reopen stdout (a regular
/// file) from the image: everything goes to out.txt.
pub fn incarnation(ckpt: &Path, dir: &Path, exe: &Path, cycle: usize) -> Child {
    incarnation_in(ckpt, dir, exe, cycle, Group::Inherited)
}

/// The process group an incarnation starts in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Group {
    /// The test's own (as a batch script's program is in its shell's).
    Inherited,
    /// One of its own, which the program leads (as an interactive shell's job, or under `setsid`).
    Own,
    /// The first run in one of its own, the restarts in the test's (a job started by hand, restarted by
    /// a batch script): `ckpt restart` makes the program lead a group again.
    OwnAtFirst,
}

/// [`incarnation`], started in the process group `group`.
pub fn incarnation_in(ckpt: &Path, dir: &Path, exe: &Path, cycle: usize, group: Group) -> Child {
    let img = dir.join("img");
    let mut cmd = command(ckpt, dir);
    if cycle == 0 {
        cmd.arg("run").arg("--dir").arg(&img).arg("--").arg(exe);
    } else {
        cmd.arg("restart").arg("--image-dir").arg(&img);
    }
    let out = dir.join("out.txt");
    if group == Group::Own || (group == Group::OwnAtFirst && cycle == 0) {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(if cycle == 0 { Stdio::from(std::fs::File::create(out).unwrap()) } else { Stdio::null() })
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("err{cycle}.txt"))).unwrap()))
        .spawn()
        .unwrap();
    if cycle > 0 && !wait_until(&mut child, Duration::from_secs(60), || root_restores(dir) >= cycle) {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            text.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        panic!(
            "restart {cycle} did not restore: {}\nlog (end):\n{}\noutput (end):\n{}\nfirst run's stderr:\n{}",
            tail(&format!("err{cycle}.txt")),
            tail("ckpt.log"),
            tail("out.txt"),
            tail("err0.txt")
        );
    }
    child
}

/// Runs `exe` (which prints "ok N" as it goes and "ERROR ..." when a call fails) through `cycles`
/// incarnations: each makes `step` more progress, then is checkpointed and ends with SIGTERM, and is
/// restarted; the last one is killed. Fails on an ERROR line, a program that ends by itself, or no
/// progress.
pub fn restart_while_busy(exe: &Path, cycles: usize, step: i64) {
    restart_while_busy_in(exe, cycles, step, Group::Inherited);
}

/// [`restart_while_busy`], every incarnation started in the process group `group` (when the program
/// leads a group, the last incarnation is killed with its whole group, children included).
pub fn restart_while_busy_in(exe: &Path, cycles: usize, step: i64, group: Group) {
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("out.txt");
    let progress =
        |text: &str| text.lines().rev().find_map(|l| l.strip_prefix("ok ")?.parse::<i64>().ok()).unwrap_or(-1);
    let last_line = |text: &str| text.lines().last().unwrap_or("").to_string();
    let mut last = -1i64;
    for cycle in 0..cycles {
        let mut child = incarnation_in(&ckpt, dir, exe, cycle, group);
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            assert!(!text.contains("ERROR"), "cycle {cycle}: {}", last_line(&text));
            if progress(&text) >= last + step {
                break;
            }
            if let Ok(Some(s)) = child.try_wait() {
                panic!("cycle {cycle}: the program ended ({s:?}): {}", last_line(&text));
            }
            assert!(t.elapsed() < Duration::from_secs(60), "cycle {cycle}: no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        let last_cycle = cycle == cycles - 1;
        let target = if last_cycle && group != Group::Inherited { -(child.id() as i32) } else { child.id() as i32 };
        // SAFETY: signals the incarnation, or the process group the test made for it.
        unsafe { libc::kill(target, if last_cycle { libc::SIGKILL } else { libc::SIGTERM }) };
        let status = wait_timeout(&mut child, Duration::from_secs(60));
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(!text.contains("ERROR"), "cycle {cycle}: {}", last_line(&text));
        last = progress(&text);
        let expected = if last_cycle { libc::SIGKILL } else { libc::SIGTERM };
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(expected), "cycle {cycle}");
    }
    assert_eq!(root_restores(dir), cycles - 1);
}
