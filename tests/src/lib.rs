//! Shared helpers of the ckpt integration tests.

use std::path::{Path, PathBuf};

use ckpt_core::Config;

/// A deterministic pseudo-random generator (xorshift64*), so failures reproduce from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A smooth float64 field (compressible after byte-shuffling), as little-endian bytes.
pub fn smooth_field(n: usize, phase: f64) -> Vec<u8> {
    (0..n).flat_map(|i| ((i as f64) * 0.001 + phase).sin().to_le_bytes()).collect()
}

/// A configuration for application `name` in `dir` with no environment.
pub fn config(name: &str, dir: &Path) -> Config {
    Config::new(name, dir).expect("valid test config")
}

/// A configuration for reading, in this test process, what a child program saved as application `name`
/// in `dir`: outside Slurm another command line is another run, so the test asks for that name's
/// checkpoints explicitly, as a user would with `CKPT_RESUME_FROM=<name>`.
pub fn reader_config(name: &str, dir: &Path) -> Config {
    let mut c = config(name, dir);
    c.resume_from = ckpt_core::identity::ResumeFrom::Job(name.to_string());
    c
}

/// Path of a built binary of this workspace (the test saver child), next to the test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir").parent().expect("profile dir");
    dir.join(name)
}

/// A child process whose stdout lines arrive on a channel, for tests that talk to live programs.
pub struct LiveChild {
    /// The process.
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line received so far.
    pub seen: Vec<String>,
}

impl LiveChild {
    /// Spawns `cmd` with stdout captured (stderr inherited).
    pub fn spawn(mut cmd: std::process::Command) -> LiveChild {
        use std::io::BufRead;
        cmd.stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn child");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LiveChild { child, lines: rx, seen: Vec::new() }
    }

    /// Waits up to `timeout` for a line starting with `prefix`; returns it.
    pub fn wait_for(&mut self, prefix: &str, timeout: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for exit (up to `timeout`, then kills) and collects the remaining lines.
    pub fn finish(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Lines seen so far that start with `prefix`.
    pub fn lines_with(&self, prefix: &str) -> Vec<&String> {
        self.seen.iter().filter(|l| l.starts_with(prefix)).collect()
    }
}

impl Drop for LiveChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for a workspace binary with a clean ckpt environment: no inherited `CKPT_*`/`SLURM_*`/MPI
/// variables, checkpoints in `dir`, the log in `dir/ckpt.log`, sockets in `dir/sock`.
pub fn clean_command(program: &Path, dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for (k, _) in std::env::vars() {
        if ["CKPT_", "SLURM_", "OMPI_", "PMI", "PMIX_"].iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.env("CKPT_DIR", dir).env("CKPT_LOG", dir.join("ckpt.log")).env("CKPT_SOCKET_DIR", dir.join("sock"));
    cmd
}

/// A finished command's status and output, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Path of the `ckpt` command, built if needed.
pub fn ckpt_cli() -> PathBuf {
    let bin = workspace_bin("ckpt");
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "ckpt-cli"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build -p ckpt-cli");
        assert!(status.success(), "building ckpt-cli failed");
    }
    bin
}

/// The JSON lines of a ckpt log file whose `event` is `event`.
pub fn log_events(path: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}
