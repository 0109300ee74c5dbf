//! Scenario 8 of the comparison runner: the LD_PRELOAD shim on unmodified programs (image size, the
//! program's pause, write time, restart time) and on a 1 GiB-resident program (pause of the forked
//! writer; restart against reading the image, measured in the same run).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Opts, stat};

/// `ckpt` and `libckpt_preload.so` next to this executable, built or found up to date.
pub(super) fn tools() -> Option<(PathBuf, PathBuf)> {
    let dir = super::build_tools(&["ckpt-cli", "ckpt-preload"]).ok()?;
    let (ckpt, lib) = (dir.join("ckpt"), dir.join("libckpt_preload.so"));
    (ckpt.exists() && lib.exists()).then_some((ckpt, lib))
}

pub(super) fn which(name: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

pub(super) fn events(log: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

pub(super) fn wait_event(log: &Path, event: &str, n: usize, child: &mut Child, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if events(log, event).len() >= n {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return events(log, event).len() >= n;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

pub(super) fn command(ckpt: &Path, lib: &Path, dir: &Path) -> Command {
    let mut c = Command::new(ckpt);
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
            c.env_remove(k);
        }
    }
    c.env("LC_ALL", "C")
        .env("CKPT_LOG", dir.join("log"))
        .env("CKPT_SOCKET_DIR", dir.join("sock"))
        .env("CKPT_PRELOAD_LIB", lib)
        .env("CKPT_KEEP", "1");
    // SAFETY: close_range in the child before exec touches no memory.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    c
}

struct Sample {
    image_mb: f64,
    pause_ms: f64,
    write_ms: f64,
    restart_ms: f64,
    read_ms: f64,
    /// Restart and reading the image with a cold page cache (dropped before each), when asked and permitted.
    cold: Option<(f64, f64)>,
    /// The line of the program's output that carried the `ready` marker (empty without one).
    ready_line: String,
}

/// Times `ckpt restart --image-dir` until the restored program logs its `n`th `restored` event, in ms.
fn restart(ckpt: &Path, lib: &Path, d: &Path, img: &Path, n: usize) -> Option<f64> {
    let t = Instant::now();
    let mut r = command(ckpt, lib, d)
        .args(["restart", "--image-dir", img.to_str()?])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let ok = wait_event(&d.join("log"), "restored", n, &mut r, Duration::from_secs(120));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = r.kill();
    let _ = r.wait();
    ok.then_some(ms)
}

/// One checkpoint (the shim's SIGRTMAX-2 after `delay`) and one restart of `argv`, and reading the image (the baseline);
/// with `cold`, both again after dropping the page cache.
fn one(
    ckpt: &Path,
    lib: &Path,
    work: &Path,
    argv: &[String],
    delay: Duration,
    ready: Option<&str>,
    cold: bool,
) -> Option<Sample> {
    let dir = tempfile::tempdir_in(work).ok()?;
    let d = dir.path();
    let log = d.join("log");
    let img = d.join("img");
    let mut child = command(ckpt, lib, d)
        .args(["run", "--dir", img.to_str()?, "--"])
        .args(argv)
        .stdout(Stdio::from(std::fs::File::create(d.join("out")).ok()?))
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut ready_line = String::new();
    if let Some(marker) = ready {
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(d.join("out")).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                ready_line = line.to_string();
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(delay);
    // The shim's reserved checkpoint signal (SIGRTMAX-2): xz owns SIGUSR1 (its progress report).
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGRTMAX() - 2) };
    if !wait_event(&log, "checkpoint", 1, &mut child, Duration::from_secs(120)) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let _ = child.kill();
    let _ = child.wait();
    let ck = events(&log, "checkpoint").pop()?;
    let image = PathBuf::from(ck["path"].as_str()?);
    let mut buf = vec![1u8; 16 << 20]; // allocated and touched before any clock starts
    let read_image = |buf: &mut [u8]| -> Option<()> {
        use std::io::Read;
        let mut f = std::fs::File::open(&image).ok()?;
        while f.read(buf).ok()? > 0 {}
        Some(())
    };
    // The writer's large writes bypass the page cache; restart and baseline both read a cached image.
    read_image(&mut buf)?;
    // Restart until the program runs again (the restorer's log line is its last step).
    let restart_ms = restart(ckpt, lib, d, &img, 1)?;
    // Baseline: reading the image once, like `cat IMAGE > /dev/null` (16 MiB chunks into one reused buffer;
    // the file is in the page cache, as it was for the restart).
    let t = Instant::now();
    read_image(&mut buf)?;
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(&buf);
    // The next job's restart, usually on another node: nothing of the image cached.
    let cold = if cold && super::drop_caches() {
        let restart_ms = restart(ckpt, lib, d, &img, 2)?;
        super::drop_caches();
        let t = Instant::now();
        read_image(&mut buf)?;
        Some((restart_ms, t.elapsed().as_secs_f64() * 1e3))
    } else {
        None
    };
    Some(Sample {
        image_mb: ck["image_bytes"].as_f64()? / 1e6,
        pause_ms: ck["pause_ms"].as_f64()?,
        write_ms: ck["write_ms"].as_f64()?,
        restart_ms,
        read_ms,
        cold,
        ready_line,
    })
}

/// A program's name and its argv (None when it is not installed).
pub(super) type NamedArgv = (&'static str, Option<Vec<String>>);

/// The distribution programs of section 8 (name, argv or None when not installed; mawk and gzip only in a
/// smoke run), their inputs written under `work`, and the python3 to use.
pub(super) fn programs(o: &Opts, work: &Path) -> (Vec<NamedArgv>, Option<String>) {
    let inputs = work.join("shim-inputs");
    std::fs::create_dir_all(&inputs).expect("inputs");
    let text = inputs.join("text.txt");
    let mut x = 1u64;
    let mut s = String::new();
    let words: Vec<String> =
        (0..4000).map(|i| (0..(2 + i % 8)).map(|j| (b'a' + ((i * 7 + j * 3) % 10) as u8) as char).collect()).collect();
    while s.len() < if o.smoke { 2_000_000 } else { 24_000_000 } {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&words[(x % 4000) as usize]);
        s.push(if x.is_multiple_of(12) { '\n' } else { ' ' });
    }
    std::fs::write(&text, &s).expect("text");
    // A large sparse file: sha256sum reads it for a few seconds without using disk space.
    let sparse = inputs.join("sparse.bin");
    std::fs::File::create(&sparse).and_then(|f| f.set_len(if o.smoke { 16 << 20 } else { 1 << 30 })).expect("sparse");
    let script = inputs.join("pi.bc");
    std::fs::write(&script, "for(i=1;i<=22;i++){scale=i*50; x=4*a(1); print i, \" \", x, \"\\n\"}\n").expect("bc");
    let py =
        if Path::new("/usr/bin/python3").exists() { Some("/usr/bin/python3".to_string()) } else { which("python3") };
    let t = text.display().to_string();
    let mut programs: Vec<NamedArgv> = vec![
        (
            "mawk",
            which("mawk").map(|m| {
                vec![m, "BEGIN{s=0; for(i=0;i<16000000;i++){s=(s*31+i)%1000003; if(i%100000==0) print i, s}}".into()]
            }),
        ),
        ("gzip -9", which("gzip").map(|g| vec![g, "-9".into(), "-c".into(), t.clone()])),
    ];
    if !o.smoke {
        programs.extend([
            ("bc -l", which("bc").map(|b| vec![b, "-l".into(), script.display().to_string()])),
            ("bzip2 -9", which("bzip2").map(|b| vec![b, "-9".into(), "-c".into(), t.clone()])),
            ("xz -4 -T1", which("xz").map(|b| vec![b, "-4".into(), "-T1".into(), "-c".into(), t.clone()])),
            ("sha256sum", which("sha256sum").map(|b| vec![b, sparse.display().to_string(), t.clone()])),
            (
                "python3",
                py.clone().map(|p| {
                    vec![p, "-c".into(), "import hashlib\nh=hashlib.sha256()\nfor i in range(3000000):\n    h.update(str(i).encode())\n    \
                     if i % 100000 == 0: print(i, h.hexdigest(), flush=True)\n".into()]
                }),
            ),
        ]);
    }
    (programs, py)
}

pub fn scenario_shim(o: &Opts, work: &Path, out: &mut String) {
    let _ = writeln!(out, "\n## 8. The LD_PRELOAD shim: unmodified programs\n");
    let Some((ckpt, lib)) = tools() else {
        let _ = writeln!(out, "Not measured: `ckpt` or `libckpt_preload.so` could not be built.");
        return;
    };
    let (programs, py) = programs(o, work);
    let runs = if o.smoke { 1 } else { o.runs.min(5) };
    let _ = writeln!(
        out,
        "Each program (from the distribution, unmodified) runs under `ckpt run`; the shim's checkpoint signal (SIGRTMAX-2) arrives 0.4 s in; \
         the image is committed; the program is killed and `ckpt restart --image-dir` resumes it. Medians of \
         {runs} runs. *Pause* is the time the program is stopped (the handler records the descriptors and \
         forks the writer); *write* is the writer's time until the image is durable (the program runs \
         meanwhile); *restart* is the wall time of `ckpt restart` (verify every CRC, exec, check the layout, \
         replace the address space) until the program runs again; *read* is reading the image file once \
         (`cat IMAGE > /dev/null`, from the page cache), measured right after, in the same run. For the small \
         programs the restart is dominated by fixed costs (exec, the dynamic loader, verification, the layout \
         check), so their ratio says little; the 1 GiB program below is the target's case.\n\n\
         | program | image | pause | write | restart | read image | restart / read |\n|---|---|---|---|---|---|---|"
    );
    for (name, argv) in programs {
        let Some(argv) = argv else {
            let _ = writeln!(out, "| {name} | not installed | | | | | |");
            continue;
        };
        let samples: Vec<Sample> =
            (0..runs).filter_map(|_| one(&ckpt, &lib, work, &argv, Duration::from_millis(400), None, false)).collect();
        if samples.is_empty() {
            let _ = writeln!(out, "| {name} | failed | | | | | |");
            continue;
        }
        let m = |f: fn(&Sample) -> f64| stat(samples.iter().map(f).collect()).median;
        let _ = writeln!(
            out,
            "| {name} | {:.1} MB | {:.2} ms | {:.0} ms | {:.0} ms | {:.1} ms | {:.1} |",
            m(|s| s.image_mb),
            m(|s| s.pause_ms),
            m(|s| s.write_ms),
            m(|s| s.restart_ms),
            m(|s| s.read_ms),
            m(|s| s.restart_ms) / m(|s| s.read_ms).max(1e-3)
        );
    }
    let _ = writeln!(
        out,
        "\nDMTCP on the same programs, in the same run as the shim, with output checked after the restart: \
         section 8b."
    );

    // A program with a large resident set.
    let mib = if o.smoke { 32 } else { 1024 };
    let _ = writeln!(out, "\n### A {mib} MiB-resident program\n");
    let Some(py) = py else {
        let _ = writeln!(out, "Not measured: python3 is not installed.");
        return;
    };
    let code = format!(
        "import os, time\nb = bytearray(os.urandom(1 << 20)) * {mib}\nprint('ready', flush=True)\n\
         i = 0\nwhile True:\n    i += 1\n    b[i % len(b)] = i & 255\n    time.sleep(0.001)\n"
    );
    let argv = vec![py, "-c".into(), code];
    let samples: Vec<Sample> = (0..runs)
        .filter_map(|_| one(&ckpt, &lib, work, &argv, Duration::from_millis(200), Some("ready"), true))
        .collect();
    if samples.is_empty() {
        let _ = writeln!(out, "Failed to measure.");
        return;
    }
    let st = |f: fn(&Sample) -> f64| stat(samples.iter().map(f).collect());
    let (pause, write, restart, read, size) =
        (st(|s| s.pause_ms), st(|s| s.write_ms), st(|s| s.restart_ms), st(|s| s.read_ms), st(|s| s.image_mb));
    let ratio = restart.median / read.median.max(1e-3);
    let _ = writeln!(
        out,
        "Image {:.0} MB. Pause of the program: median **{:.1} ms** (min–max {:.1}–{:.1}); target ≤ 100 ms: {}. \
         The forked writer made the image durable in {:.0} ms (median) while the program ran on. Restart until \
         the program runs again: **{:.0} ms** (min–max {:.0}–{:.0}); reading the image once: {:.0} ms; ratio \
         **{:.2}** (target ≤ 1.2: {}).{}",
        size.median,
        pause.median,
        pause.min,
        pause.max,
        if pause.median <= 100.0 { "met" } else { "NOT met" },
        write.median,
        restart.median,
        restart.min,
        restart.max,
        read.median,
        ratio,
        if ratio <= 1.2 { "met" } else { "NOT met" },
        if ratio > 1.2 {
            " What limits it: `ckpt restart` verifies every CRC of the image (one pass over it, through the \
             mapping) before anything runs; the restorer then maps the pages copy-on-write (no second read). \
             The rest is the fixed cost of exec, the dynamic loader and the layout check (see the small \
             programs above)."
        } else {
            ""
        }
    );
    let cold: Vec<(f64, f64)> = samples.iter().filter_map(|s| s.cold).collect();
    if cold.is_empty() {
        let _ = writeln!(
            out,
            "\nFrom a cold page cache: not measured (dropping the page cache, `/proc/sys/vm/drop_caches`, was \
             not permitted)."
        );
    } else {
        let (r, rd) = (stat(cold.iter().map(|c| c.0).collect()), stat(cold.iter().map(|c| c.1).collect()));
        let _ = writeln!(
            out,
            "\nFrom a cold page cache (dropped before the restart and before the read; the next job's restart, \
             usually on another node): restart **{:.0} ms** (min–max {:.0}–{:.0}), reading the image once \
             {:.0} ms ({:.0}–{:.0}); ratio **{:.2}** (the target's 1.2 is for reading the image, cached or not). \
             The restart reads the image once, to verify it; the restored program then maps those cached pages.",
            r.median,
            r.min,
            r.max,
            rd.median,
            rd.min,
            rd.max,
            r.median / rd.median.max(1e-3)
        );
    }
    sparse_program(o, (&ckpt, &lib), &argv[0], work, out);
}

/// A program whose address space is mostly untouched or zero: the image holds only the pages with data.
fn sparse_program(o: &Opts, (ckpt, lib): (&Path, &Path), python: &str, work: &Path, out: &mut String) {
    let (reserved_mib, data_mib, zero_mib) = if o.smoke { (64, 4, 4) } else { (1024, 64, 256) };
    let _ = writeln!(out, "\n### Untouched and zero pages\n");
    // An anonymous mapping: never touched until written. Then every 16th MiB gets random bytes, and a
    // bytearray is filled with zeros (resident, all zero).
    let code = format!(
        "import mmap, os, time\n\
         b = mmap.mmap(-1, {reserved_mib} << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
         step = ({reserved_mib} << 20) // {data_mib}\n\
         for i in range({data_mib}):\n    b[i * step:i * step + (1 << 20)] = os.urandom(1 << 20)\n\
         z = bytearray(b'\\0') * ({zero_mib} << 20)\n\
         rss = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS:')][0]\n\
         print('ready rss_kib', rss, flush=True)\n\
         i = 0\nwhile True:\n    i += 1\n    b[(i * 4096) % step] = i & 255\n    time.sleep(0.001)\n"
    );
    let argv = vec![python.to_string(), "-c".into(), code];
    let runs = if o.smoke { 1 } else { o.runs.min(5) };
    let samples: Vec<Sample> = (0..runs)
        .filter_map(|_| one(ckpt, lib, work, &argv, Duration::from_millis(200), Some("ready"), false))
        .collect();
    let Some(first) = samples.first() else {
        let _ = writeln!(out, "Failed to measure.");
        return;
    };
    let rss_mb =
        first.ready_line.split_whitespace().last().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) * 1024.0 / 1e6;
    let st = |f: fn(&Sample) -> f64| stat(samples.iter().map(f).collect());
    let (image, pause, restart) = (st(|s| s.image_mb), st(|s| s.pause_ms), st(|s| s.restart_ms));
    let _ = writeln!(
        out,
        "Python mapping {reserved_mib} MiB of private anonymous memory (`mmap.mmap(-1, n, \
         flags=MAP_PRIVATE | MAP_ANONYMOUS)`, never touched) of which {data_mib} MiB (one MiB in every {} MiB) \
         get random bytes, and holding a {zero_mib} MiB `bytearray` of zeros (written, resident, all zero); \
         resident set {rss_mb:.0} MB when the checkpoint was taken. Image **{:.0} MB** (median of {}), pause \
         {:.1} ms, restart {:.0} ms: the writer reads the page map and saves only pages that are present (or \
         swapped) and not all zeros; the others come back as zero pages of the restored mapping.",
        reserved_mib / data_mib,
        image.median,
        samples.len(),
        pause.median,
        restart.median,
    );
}
