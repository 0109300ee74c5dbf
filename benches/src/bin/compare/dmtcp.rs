//! Scenario 8b of the comparison runner: the LD_PRELOAD shim against DMTCP, side by side, in the same run.
//!
//! For each program (section 8's distribution programs, and a 1 GiB-resident C program, single- and
//! multi-threaded: `benches/shim/resident.c`), each round runs three cases in a rotating order: the shim
//! (`ckpt run`, its checkpoint signal, kill, `ckpt restart --image-dir`), DMTCP with `--no-gzip`, and DMTCP
//! with its default gzip (`dmtcp_launch --new-coordinator`, `dmtcp_command -bc`, `--quit`,
//! `dmtcp_restart --new-coordinator`). Every case lets the restarted program run to its end and compares its
//! output with an uninterrupted run's, byte for byte.
//!
//! DMTCP is found through `--dmtcp PREFIX` (its install prefix: `PREFIX/bin/dmtcp_launch`), else on `PATH`;
//! without it the section says how to measure it and nothing else runs.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::shim::{command, events, programs, tools, which};
use super::{Opts, rotated, stat};

const TIMEOUT: Duration = Duration::from_secs(600);

/// The three cases of a round.
#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Ckpt,
    DmtcpRaw,
    DmtcpGzip,
}

/// One checkpoint and restart of one case.
struct Sample {
    image_mb: f64,
    /// From the checkpoint request to the image on disk and durable, wall time seen by the runner (ms).
    durable_ms: f64,
    /// The time the program was stopped (ms): the shim's handler (it reports it); DMTCP stops the program
    /// for the whole `dmtcp_command -bc` (without the fsync this runner adds for `--no-gzip`).
    pause_ms: f64,
    /// From starting the restart to the program running again (ms).
    restart_ms: f64,
    /// The restarted program's output is the uninterrupted run's, byte for byte.
    identical: bool,
    /// The threads the shim saved (its `checkpoint` event's `threads`); None for DMTCP.
    threads: Option<u64>,
}

enum Outcome {
    Done(Sample),
    /// The tool refused the checkpoint, with its reason.
    Refused(String),
    Failed(String),
}

struct Program {
    name: String,
    argv: Vec<String>,
    /// A line the program prints when its state is built (the checkpoint comes `delay` after it).
    ready: Option<&'static str>,
    delay: Duration,
    reference: Vec<u8>,
}

fn wait_file_line(path: &Path, marker: &str, child: &mut Child) -> bool {
    let t = Instant::now();
    while t.elapsed() < TIMEOUT {
        if std::fs::read_to_string(path).unwrap_or_default().lines().any(|l| l.contains(marker)) {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Reads `path` once (16 MiB chunks), so that both tools restart from an image in the page cache (the shim
/// writes large images with O_DIRECT, DMTCP through the page cache).
fn warm(path: &Path) {
    let mut buf = vec![0u8; 16 << 20];
    if let Ok(mut f) = std::fs::File::open(path) {
        while f.read(&mut buf).is_ok_and(|n| n > 0) {}
    }
}

fn same_output(d: &Path, p: &Program) -> bool {
    std::fs::read(d.join("out")).is_ok_and(|o| o == p.reference)
}

fn ckpt_one(ckpt: &Path, lib: &Path, work: &Path, p: &Program) -> Outcome {
    let Ok(dir) = tempfile::tempdir_in(work) else { return Outcome::Failed("scratch directory".into()) };
    let d = dir.path();
    let (log, img) = (d.join("log"), d.join("img"));
    let (Ok(out), Ok(err)) = (std::fs::File::create(d.join("out")), std::fs::File::create(d.join("err"))) else {
        return Outcome::Failed("output files".into());
    };
    let Ok(mut child) = command(ckpt, lib, d)
        .args(["run", "--dir", &img.display().to_string(), "--"])
        .args(&p.argv)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
    else {
        return Outcome::Failed("`ckpt run` did not start".into());
    };
    if let Some(marker) = p.ready
        && !wait_file_line(&d.join("out"), marker, &mut child)
    {
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Failed("the program never printed its ready line".into());
    }
    std::thread::sleep(p.delay);
    let t = Instant::now();
    // SAFETY: kill has no memory effects. SIGRTMAX-2 is the shim's checkpoint signal.
    unsafe { libc::kill(child.id() as i32, libc::SIGRTMAX() - 2) };
    let mut found = None;
    while t.elapsed() < TIMEOUT && found.is_none() {
        if let Some(r) = events(&log, "checkpoint-refused").pop() {
            found = Some(Err(r["reason"].as_str().unwrap_or("?").to_string()));
        } else if let Some(c) = events(&log, "checkpoint").pop() {
            found = Some(Ok(c));
        } else if let Ok(Some(st)) = child.try_wait() {
            return Outcome::Failed(format!("the program ended before its checkpoint ({st})"));
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let durable_ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = child.kill();
    let _ = child.wait();
    let ck = match found {
        None => return Outcome::Failed("no checkpoint within the time limit".into()),
        Some(Err(reason)) => return Outcome::Refused(reason),
        Some(Ok(c)) => c,
    };
    let (Some(path), Some(bytes), Some(pause_ms)) =
        (ck["path"].as_str(), ck["image_bytes"].as_f64(), ck["pause_ms"].as_f64())
    else {
        return Outcome::Failed(format!("checkpoint event without path/image_bytes/pause_ms: {ck}"));
    };
    warm(Path::new(path));
    let t = Instant::now();
    let Ok(mut r) = command(ckpt, lib, d)
        .args(["restart", "--image-dir", &img.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("restart.err")).map(Stdio::from).unwrap_or(Stdio::null()))
        .spawn()
    else {
        return Outcome::Failed("`ckpt restart` did not start".into());
    };
    if !super::shim::wait_event(&log, "restored", 1, &mut r, TIMEOUT) {
        let _ = r.kill();
        let _ = r.wait();
        let why = std::fs::read_to_string(d.join("restart.err")).unwrap_or_default();
        return Outcome::Failed(format!("restart: no `restored` event; stderr: {}", why.trim()));
    }
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    if !wait_exit(&mut r, TIMEOUT) {
        return Outcome::Failed("the restarted program did not end".into());
    }
    let threads = ck["threads"].as_u64();
    Outcome::Done(Sample {
        image_mb: bytes / 1e6,
        durable_ms,
        pause_ms,
        restart_ms,
        identical: same_output(d, p),
        threads,
    })
}

fn dmtcp_cmd(bin: &Path, name: &str, d: &Path) -> Command {
    let mut c = Command::new(bin.join(name));
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("DMTCP_") || k == "LD_PRELOAD" {
            c.env_remove(k);
        }
    }
    c.env("LC_ALL", "C").env("DMTCP_TMPDIR", d.join("tmp")).stdin(Stdio::null());
    c
}

fn read_port(pf: &Path, child: &mut Child) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok(p) = std::fs::read_to_string(pf)
            && !p.trim().is_empty()
        {
            return Some(p.trim().to_string());
        }
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// The coordinator on `port` reports one peer or more, all running.
fn dmtcp_running(bin: &Path, d: &Path, port: &str) -> bool {
    let Ok(o) = dmtcp_cmd(bin, "dmtcp_command", d).args(["--port", port, "-s"]).stderr(Stdio::null()).output() else {
        return false;
    };
    let s = String::from_utf8_lossy(&o.stdout);
    s.contains("RUNNING=yes") && !s.contains("NUM_PEERS=0")
}

fn images(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "dmtcp"))
                .collect()
        })
        .unwrap_or_default()
}

fn dmtcp_one(bin: &Path, work: &Path, p: &Program, gzip: bool) -> Outcome {
    let Ok(dir) = tempfile::tempdir_in(work) else { return Outcome::Failed("scratch directory".into()) };
    let d = dir.path();
    let (c1, c2) = (d.join("c1"), d.join("c2"));
    for sub in [&c1, &c2, &d.join("tmp")] {
        let _ = std::fs::create_dir_all(sub);
    }
    // The program's stdio is opened by a shell that runs under DMTCP (`exec` then replaces it with the
    // program): DMTCP restores files it saw opened. Descriptors redirected by the launching shell itself
    // are not saved (see the text of the section).
    let wrapper = format!("exec \"$@\" < /dev/null > '{}' 2> '{}'", d.join("out").display(), d.join("err").display());
    let mut launch = dmtcp_cmd(bin, "dmtcp_launch", d);
    launch.args(["--new-coordinator", "--coord-port", "0", "--port-file"]).arg(d.join("pf"));
    launch.arg("--ckptdir").arg(&c1);
    if !gzip {
        launch.arg("--no-gzip");
    }
    launch.args(["sh", "-c", &wrapper, "sh"]).args(&p.argv);
    let Ok(log) = std::fs::File::create(d.join("launch.log")) else { return Outcome::Failed("log file".into()) };
    let Ok(mut child) = launch.stdout(Stdio::null()).stderr(log).spawn() else {
        return Outcome::Failed("dmtcp_launch did not start".into());
    };
    let Some(port) = read_port(&d.join("pf"), &mut child) else {
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Failed("dmtcp_launch: no coordinator port".into());
    };
    let quit = |port: &str| {
        let _ = dmtcp_cmd(bin, "dmtcp_command", d)
            .args(["--port", port, "--quit"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    if let Some(marker) = p.ready
        && !wait_file_line(&d.join("out"), marker, &mut child)
    {
        quit(&port);
        let _ = child.kill();
        let _ = child.wait();
        return Outcome::Failed("the program never printed its ready line".into());
    }
    std::thread::sleep(p.delay);
    let t = Instant::now();
    let ok = dmtcp_cmd(bin, "dmtcp_command", d)
        .args(["--port", &port, "-bc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let pause_ms = t.elapsed().as_secs_f64() * 1e3;
    let imgs = images(&c1);
    // DMTCP fsyncs a gzip image (the gzip pipe's end), not an uncompressed one: the runner does, so that
    // both tools are timed to a durable image.
    for i in &imgs {
        let _ = std::fs::File::open(i).and_then(|f| f.sync_all());
    }
    let durable_ms = t.elapsed().as_secs_f64() * 1e3;
    quit(&port);
    let _ = wait_exit(&mut child, Duration::from_secs(30));
    if !ok || imgs.len() != 1 {
        let log = std::fs::read_to_string(d.join("launch.log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        return Outcome::Failed(format!("`dmtcp_command -bc` ok={ok}, {} image(s); log: {tail}", imgs.len()));
    }
    let image_mb = std::fs::metadata(&imgs[0]).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    warm(&imgs[0]);
    let t = Instant::now();
    let mut restart = dmtcp_cmd(bin, "dmtcp_restart", d);
    restart.args(["--new-coordinator", "--coord-port", "0", "--port-file"]).arg(d.join("pf2"));
    restart.arg("--ckptdir").arg(&c2).arg(&imgs[0]);
    let Ok(rlog) = std::fs::File::create(d.join("restart.log")) else { return Outcome::Failed("log file".into()) };
    let Ok(mut r) = restart.stdout(Stdio::null()).stderr(rlog).spawn() else {
        return Outcome::Failed("dmtcp_restart did not start".into());
    };
    let Some(port2) = read_port(&d.join("pf2"), &mut r) else {
        let _ = r.kill();
        let _ = r.wait();
        return Outcome::Failed("dmtcp_restart: no coordinator port".into());
    };
    let mut running = false;
    while t.elapsed() < TIMEOUT {
        if dmtcp_running(bin, d, &port2) {
            running = true;
            break;
        }
        if let Ok(Some(_)) = r.try_wait() {
            // Ended before the runner saw it running (a short rest of the program): the end counts.
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    if !running {
        quit(&port2);
        let _ = r.kill();
        let _ = r.wait();
        return Outcome::Failed("dmtcp_restart: never running".into());
    }
    if !wait_exit(&mut r, TIMEOUT) {
        quit(&port2);
        return Outcome::Failed("the restarted program did not end".into());
    }
    Outcome::Done(Sample { image_mb, durable_ms, pause_ms, restart_ms, identical: same_output(d, p), threads: None })
}

/// The uninterrupted run's output (stdout and stderr to files, as under the tools), or why not.
fn reference(argv: &[String], work: &Path) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir_in(work).map_err(|e| e.to_string())?;
    let out = dir.path().join("out");
    let st = Command::new(&argv[0])
        .args(&argv[1..])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).map_err(|e| e.to_string())?)
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("the uninterrupted run failed: {st}"));
    }
    std::fs::read(out).map_err(|e| e.to_string())
}

/// The directory of DMTCP's programs: `--dmtcp PREFIX` (PREFIX/bin or PREFIX itself), else `PATH`.
fn dmtcp_bin(o: &Opts) -> Result<PathBuf, String> {
    let found = |d: &Path| ["dmtcp_launch", "dmtcp_command", "dmtcp_restart"].iter().all(|n| d.join(n).is_file());
    match &o.dmtcp {
        Some(prefix) => [prefix.join("bin"), prefix.clone()].into_iter().find(|d| found(d)).ok_or_else(|| {
            format!("`--dmtcp {}`: no dmtcp_launch, dmtcp_command, dmtcp_restart there", prefix.display())
        }),
        None => which("dmtcp_launch")
            .and_then(|p| Path::new(&p).parent().map(Path::to_path_buf))
            .filter(|d| found(d))
            .ok_or_else(|| "DMTCP was not given (`--dmtcp PREFIX`) and is not on PATH".to_string()),
    }
}

fn dmtcp_version(bin: &Path) -> String {
    Command::new(bin.join("dmtcp_launch"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

struct Row {
    name: String,
    /// Per tool (Ckpt, DmtcpRaw, DmtcpGzip): samples, refusals and failures.
    samples: [Vec<Sample>; 3],
    refused: [Option<String>; 3],
    failures: [Vec<String>; 3],
}

fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} ms")
    } else if v < 1000.0 {
        format!("{v:.0} ms")
    } else {
        format!("{:.2} s", v / 1e3)
    }
}

fn cell(r: &Row, t: usize, f: fn(&Sample) -> f64, fmt: fn(f64) -> String) -> String {
    if let Some(why) = &r.refused[t] {
        return format!("refused ({})", short_reason(why));
    }
    if r.samples[t].is_empty() {
        return "failed".into();
    }
    let s = stat(r.samples[t].iter().map(f).collect());
    if r.samples[t].len() > 1 && (s.max - s.min) > 0.2 * s.median.max(1e-9) {
        format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max))
    } else {
        fmt(s.median)
    }
}

fn short_reason(why: &str) -> String {
    if why.contains("thread") { "threads".into() } else { why.chars().take(60).collect() }
}

fn median_of(r: &Row, t: usize, f: fn(&Sample) -> f64) -> Option<f64> {
    (!r.samples[t].is_empty()).then(|| stat(r.samples[t].iter().map(f).collect()).median)
}

fn ratio(r: &Row, a: usize, b: usize, f: fn(&Sample) -> f64) -> String {
    match (median_of(r, a, f), median_of(r, b, f)) {
        (Some(x), Some(y)) if y > 0.0 => {
            let q = x / y;
            if q < 0.01 {
                format!("{q:.4}")
            } else if q < 0.1 {
                format!("{q:.3}")
            } else {
                format!("{q:.2}")
            }
        }
        _ => "–".into(),
    }
}

fn identical(r: &Row, t: usize) -> String {
    if r.refused[t].is_some() {
        return "–".into();
    }
    let n = r.samples[t].len() + r.failures[t].len();
    format!("{}/{}", r.samples[t].iter().filter(|s| s.identical).count(), n)
}

pub fn scenario_dmtcp(o: &Opts, work: &Path, out: &mut String) {
    let _ = writeln!(out, "\n## 8b. The shim against DMTCP, side by side\n");
    let bin = match dmtcp_bin(o) {
        Ok(b) => b,
        Err(why) => {
            eprintln!("section 8b skipped: {why}");
            let _ = writeln!(
                out,
                "Not measured in this run: {why}. Build DMTCP from source (`./configure --prefix=PREFIX && make && \
                 make install`, in its source tree) and pass `--dmtcp PREFIX`."
            );
            return;
        }
    };
    let Some((ckpt, lib)) = tools() else {
        let _ = writeln!(out, "Not measured: `ckpt` or `libckpt_preload.so` could not be built.");
        return;
    };
    let runs = if o.smoke { 1 } else { o.runs.max(5) };
    let (dist, _) = programs(o, work);
    let mut list: Vec<Program> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for (name, argv) in dist {
        let Some(argv) = argv else {
            missing.push(format!("{name}: not installed"));
            continue;
        };
        match reference(&argv, work) {
            Ok(reference) => list.push(Program {
                name: name.to_string(),
                argv,
                ready: None,
                delay: Duration::from_millis(400),
                reference,
            }),
            Err(e) => missing.push(format!("{name}: {e}")),
        }
    }
    // The resident program: built here from benches/shim/resident.c.
    let mib = if o.smoke { 32 } else { 1024 };
    let src = work.join("resident.c");
    let exe = work.join("resident");
    let built = std::fs::write(&src, include_str!("../../../shim/resident.c")).is_ok()
        && Command::new("cc").args(["-O2", "-pthread", "-o"]).arg(&exe).arg(&src).status().is_ok_and(|s| s.success());
    let threads = 3;
    if built {
        for (label, nt) in [("1 thread", 1), (&*format!("{threads} threads"), threads)] {
            // 24 passes over 1 GiB (about 2 s); as long for smaller sizes.
            let passes = 24 * 1024 / mib;
            let argv = vec![exe.display().to_string(), mib.to_string(), nt.to_string(), passes.to_string()];
            match reference(&argv, work) {
                Ok(reference) => list.push(Program {
                    name: format!("resident {mib} MiB, {label}"),
                    argv,
                    ready: Some("ready"),
                    delay: Duration::from_millis(200),
                    reference,
                }),
                Err(e) => missing.push(format!("resident {label}: {e}")),
            }
        }
    } else {
        missing.push("resident: `cc` failed".into());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rows: Vec<Row> = Vec::new();
    let tools = [Tool::Ckpt, Tool::DmtcpRaw, Tool::DmtcpGzip];
    for p in &list {
        eprintln!("8b: {}", p.name);
        let mut row = Row {
            name: p.name.clone(),
            samples: Default::default(),
            refused: Default::default(),
            failures: Default::default(),
        };
        for round in 0..runs {
            for i in rotated(0..3, round) {
                if row.refused[i].is_some() {
                    continue;
                }
                let outcome = match tools[i] {
                    Tool::Ckpt => ckpt_one(&ckpt, &lib, work, p),
                    Tool::DmtcpRaw => dmtcp_one(&bin, work, p, false),
                    Tool::DmtcpGzip => dmtcp_one(&bin, work, p, true),
                };
                match outcome {
                    Outcome::Done(s) => {
                        eprintln!(
                            "  {} round {round}: image {:.1} MB, pause {:.1} ms, durable {:.1} ms, restart {:.1} ms, identical {}{}",
                            ["ckpt", "dmtcp", "dmtcp gzip"][i],
                            s.image_mb,
                            s.pause_ms,
                            s.durable_ms,
                            s.restart_ms,
                            s.identical,
                            s.threads.map(|n| format!(", threads {n}")).unwrap_or_default()
                        );
                        row.samples[i].push(s)
                    }
                    Outcome::Refused(why) => {
                        eprintln!("  {} refused: {why}", ["ckpt", "dmtcp", "dmtcp gzip"][i]);
                        row.refused[i] = Some(why)
                    }
                    Outcome::Failed(why) => {
                        eprintln!("  {} round {round} FAILED: {why}", ["ckpt", "dmtcp", "dmtcp gzip"][i]);
                        row.failures[i].push(why)
                    }
                }
            }
        }
        rows.push(row);
    }
    let version = dmtcp_version(&bin);
    let _ = writeln!(
        out,
        "This section alone: `cargo run --release -p ckpt-benches --bin ckpt-bench-compare -- --runs {runs} \
         --only 8b --dmtcp PREFIX --dir target` (PREFIX: DMTCP's install prefix, built from source with \
         `./configure --prefix=PREFIX && make && make install` in its source tree). Machine: {}; load average \
         at the start of the section {} (other jobs share the vCPUs: read the ratios).\n",
        super::machine(work),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        out,
        "Both tools on the same programs in the same run: every round runs the shim, DMTCP uncompressed \
         (`--no-gzip`) and DMTCP with its default gzip, in a rotating order; medians of {runs} rounds (min–max \
         when they spread more than 20 %). DMTCP: {version} (`{}`). Per case: the program starts under the tool \
         (`ckpt run -- PROG > out`; `dmtcp_launch --new-coordinator --coord-port 0 sh -c 'exec PROG > out'`), is \
         checkpointed 0.4 s in (the resident programs 0.2 s after printing `ready`: their 1 GiB is filled), \
         killed, restarted (`ckpt restart --image-dir`; `dmtcp_restart --new-coordinator IMAGE`) from an image \
         in the page cache, and runs to its end; its output is then compared with an uninterrupted run's.\n\n\
         * *checkpoint*: from the request (the shim's signal; `dmtcp_command -bc`) until the image is durable. \
         DMTCP fsyncs its gzip images, not its uncompressed ones: the runner fsyncs those after `-bc` returns. \
         *pause*: how long the program is stopped: the shim's handler (the forked writer then writes while the \
         program runs on); DMTCP stops the program for the whole checkpoint (`-bc`, without the added fsync).\n\
         * *restart*: until the program runs again: the shim's `restored` log line; DMTCP's coordinator \
         reporting its peer `RUNNING` (polled with `dmtcp_command -s`, about 2–5 ms per poll).\n\
         * *identical*: restarts whose final output equals the uninterrupted run's, of those measured.\n\
         * The shim's images are not compressed (zstd is not implemented yet); it saves only the pages present \
         and not all zero.\n",
        bin.display()
    );
    let _ = writeln!(
        out,
        "| program | image: ckpt | DMTCP | DMTCP gzip | checkpoint: ckpt | DMTCP | DMTCP gzip | pause: ckpt | DMTCP | \
         restart: ckpt | DMTCP | DMTCP gzip | identical: ckpt | DMTCP | DMTCP gzip |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mb = |v: f64| if v < 10.0 { format!("{v:.1} MB") } else { format!("{v:.0} MB") };
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            cell(r, 0, |s| s.image_mb, mb),
            cell(r, 1, |s| s.image_mb, mb),
            cell(r, 2, |s| s.image_mb, mb),
            cell(r, 0, |s| s.durable_ms, fmt_ms),
            cell(r, 1, |s| s.durable_ms, fmt_ms),
            cell(r, 2, |s| s.durable_ms, fmt_ms),
            cell(r, 0, |s| s.pause_ms, fmt_ms),
            cell(r, 1, |s| s.pause_ms, fmt_ms),
            cell(r, 0, |s| s.restart_ms, fmt_ms),
            cell(r, 1, |s| s.restart_ms, fmt_ms),
            cell(r, 2, |s| s.restart_ms, fmt_ms),
            identical(r, 0),
            identical(r, 1),
            identical(r, 2),
        );
    }
    let _ = writeln!(
        out,
        "\nRatios ckpt / DMTCP (medians; below 1: the shim is smaller or faster):\n\n\
         | program | image / DMTCP | image / DMTCP gzip | checkpoint / DMTCP | checkpoint / DMTCP gzip | pause / DMTCP | \
         restart / DMTCP | restart / DMTCP gzip |\n|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            ratio(r, 0, 1, |s| s.image_mb),
            ratio(r, 0, 2, |s| s.image_mb),
            ratio(r, 0, 1, |s| s.durable_ms),
            ratio(r, 0, 2, |s| s.durable_ms),
            ratio(r, 0, 1, |s| s.pause_ms),
            ratio(r, 0, 1, |s| s.restart_ms),
            ratio(r, 0, 2, |s| s.restart_ms),
        );
    }
    let mut notes: Vec<String> = missing.iter().map(|m| format!("* Not measured: {m}.")).collect();
    for r in &rows {
        for (t, name) in ["the shim", "DMTCP", "DMTCP gzip"].iter().enumerate() {
            if let Some(why) = &r.refused[t] {
                notes.push(format!("* {}: {name} refused the checkpoint: \"{why}\".", r.name));
            }
            let mut f = r.failures[t].clone();
            f.dedup();
            for why in f {
                notes.push(format!("* {}: {name} failed: {why}.", r.name));
            }
            let mut saved: Vec<u64> = r.samples[t].iter().filter_map(|s| s.threads).collect();
            saved.sort_unstable();
            saved.dedup();
            if saved.iter().any(|&n| n > 1) {
                let list: Vec<String> = saved.iter().map(u64::to_string).collect();
                notes.push(format!(
                    "* {}: {name} saved {} threads in each image (its `checkpoint` event's `threads`).",
                    r.name,
                    list.join(" or ")
                ));
            }
            let bad = r.samples[t].iter().filter(|s| !s.identical).count();
            if bad > 0 {
                notes.push(format!(
                    "* {}: {name}: {bad} restart(s) ended with an output different from the uninterrupted run's.",
                    r.name
                ));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n{}", notes.join("\n"));
    }
}
