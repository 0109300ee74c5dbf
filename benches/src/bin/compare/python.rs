//! Scenario 9 of the comparison runner: Python. `ckpt.save` of a float64 numpy array against the
//! hand-written pickle pattern (`pickle.dump` to a temporary file + `os.rename`), the same made durable, and `np.save` + fsync;
//! `ckpt.load(mmap=True)` and a full pass over the array against `np.load` (and `pickle.load`).
//!
//! The timing is done by `benches/python/bench_save.py` (interleaved, one JSON object of per-run timings);
//! this module finds a Python with `ckpt` and numpy (or makes one: a venv in `target/bench-venv` with numpy
//! from pip and the package built from `ckpt-py/` by maturin, as `ckpt-py/run-tests.sh` does), runs the
//! script and renders the tables. In `--smoke` mode nothing is built: without a ready venv the section says
//! "Not measured".

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use super::{Opts, Stat, stat};

const VENV: &str = "bench-venv";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// The Cargo target directory this runner was built in (`target/release/ckpt-bench-compare` -> `target`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| repo_root().join("target"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// A command whose output goes to our stderr (the Markdown goes to stdout), without ckpt/Slurm settings.
fn quiet(program: &Path) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null()).stdout(Stdio::from(std::io::stderr()));
    c
}

fn succeeds(c: &mut Command) -> bool {
    c.status().is_ok_and(|s| s.success())
}

/// The installed extension module of `python` when it imports both `ckpt` and numpy.
fn probe(python: &Path) -> Option<PathBuf> {
    if !python.is_file() {
        return None;
    }
    let out = quiet(python)
        .args(["-c", "import numpy, ckpt, ckpt._ckpt as m; print(m.__file__)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn newest_mtime(path: &Path, newest: &mut SystemTime) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.is_dir() {
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            newest_mtime(&e.path(), newest);
        }
    } else if let Ok(m) = meta.modified() {
        *newest = (*newest).max(m);
    }
}

/// Whether the sources of the package (its Rust and Python code, and ckpt-core's) are newer than `ext`.
fn stale(ext: &Path) -> bool {
    let Ok(built) = std::fs::metadata(ext).and_then(|m| m.modified()) else { return true };
    let root = repo_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    for p in ["ckpt-py/src", "ckpt-py/python", "ckpt-py/Cargo.toml", "ckpt-core/src", "ckpt-core/Cargo.toml"] {
        newest_mtime(&root.join(p), &mut newest);
    }
    newest > built
}

/// Builds the package from this checkout and installs it (and numpy) into `venv`; creates the venv first.
fn install(venv: &Path) -> Result<(), String> {
    let py = venv.join("bin/python");
    if !py.is_file() {
        let Some(python3) = which("python3") else { return Err("python3 is not installed".into()) };
        if !succeeds(
            quiet(&python3)
                .stderr(Stdio::null())
                .args(["-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"]),
        ) {
            return Err(format!("{} is not Python >= 3.11 with a working venv module", python3.display()));
        }
        eprintln!("python scenario: creating {}", venv.display());
        if !succeeds(quiet(&python3).arg("-m").arg("venv").arg(venv)) {
            return Err(format!("`python3 -m venv {}` failed", venv.display()));
        }
    }
    if std::env::var_os("CARGO").is_none() && which("cargo").is_none() {
        return Err("cargo (needed by maturin to build the package) is not available".into());
    }
    eprintln!("python scenario: installing numpy and ckpt-py (maturin, release build) into {}", venv.display());
    if !succeeds(quiet(&py).args(["-m", "pip", "install", "--quiet", "numpy"])) {
        return Err("`pip install numpy` failed".into());
    }
    let pkg = repo_root().join("ckpt-py");
    if !succeeds(quiet(&py).args(["-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps"]).arg(&pkg)) {
        return Err(format!("`pip install {}` (maturin build) failed", pkg.display()));
    }
    Ok(())
}

/// A Python with `ckpt` and numpy, and a note on where it comes from; or why there is none.
fn python(smoke: bool) -> Result<(PathBuf, String), String> {
    let target = target_dir();
    let ours = target.join(VENV);
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("CKPT_BENCH_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        candidates.push(Path::new(&v).join("bin/python"));
    }
    candidates.push(ours.join("bin/python"));
    for e in std::fs::read_dir(&target).into_iter().flatten().flatten() {
        let p = e.path();
        if p != ours && p.join("pyvenv.cfg").is_file() {
            candidates.push(p.join("bin/python"));
        }
    }
    let mut old = None;
    for c in &candidates {
        let Some(ext) = probe(c) else { continue };
        if !stale(&ext) {
            return Ok((c.clone(), String::new()));
        }
        old.get_or_insert((c.clone(), ext));
    }
    let stale_note = |c: &Path, why: &str| {
        format!(" **The package in `{}` is older than the sources ({why}); measured with it.**", c.display())
    };
    if smoke {
        return match old {
            Some((c, _)) => Ok((c.clone(), stale_note(&c, "not rebuilt in a smoke run"))),
            None => Err(format!(
                "no Python environment with `ckpt` and numpy (looked for `{}`; a full run creates it, or set \
                 CKPT_BENCH_PYTHON), and a smoke run does not build the package",
                ours.join("bin/python").display()
            )),
        };
    }
    match install(&ours) {
        Ok(()) => match probe(&ours.join("bin/python")) {
            Some(_) => Ok((ours.join("bin/python"), String::new())),
            None => Err(format!("`{}` cannot import ckpt and numpy after installing", ours.display())),
        },
        Err(e) => match old {
            Some((c, _)) => Ok((c.clone(), stale_note(&c, &format!("rebuilding failed: {e}")))),
            None => Err(e),
        },
    }
}

fn times(v: &serde_json::Value, group: &str, name: &str) -> Option<Stat> {
    let runs: Vec<f64> = v[group][name].as_array()?.iter().filter_map(serde_json::Value::as_f64).collect();
    (!runs.is_empty()).then(|| stat(runs))
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

pub fn scenario_python(o: &Opts, work: &Path, out: &mut String) {
    let mib = if o.smoke { 8 } else { o.size_mib };
    let _ = writeln!(out, "\n## 9. Python: `ckpt.save` and `ckpt.load` of a {mib} MiB float64 numpy array\n");
    let (py, note) = match python(o.smoke) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}.");
            return;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/bench_save.py");
    let dir = work.join("python");
    let result = quiet(&py)
        .arg(&script)
        .arg(mib.to_string())
        .arg(o.runs.to_string())
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output();
    let v: serde_json::Value = match result {
        Ok(r) if r.status.success() => match serde_json::from_slice(&r.stdout) {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(out, "Not measured: `{}` printed no JSON ({e}).", script.display());
                return;
            }
        },
        Ok(r) => {
            let _ = writeln!(out, "Not measured: `{}` failed ({}).", script.display(), r.status);
            return;
        }
        Err(e) => {
            let _ = writeln!(out, "Not measured: cannot run {}: {e}.", py.display());
            return;
        }
    };
    let bytes = v["array_bytes"].as_f64().unwrap_or((mib << 20) as f64);
    let proto = v["pickle_protocol"].as_i64().unwrap_or(0);
    let s = |name| times(&v, "save", name);
    let (Some(ck), Some(seed), Some(seed_d), Some(npy)) =
        (s("ckpt"), s("pickle_seed"), s("pickle_durable"), s("numpy_fsync"))
    else {
        let _ = writeln!(out, "Not measured: the script's output lacks save timings.");
        return;
    };
    let device = s("device_direct");
    let l = |group, name| times(&v, group, name);
    let (Some(ck_open), Some(ck_pass), Some(np_load), Some(np_pass), Some(pk_load), Some(pk_pass)) = (
        l("load_open", "ckpt"),
        l("load_pass", "ckpt"),
        l("load_open", "numpy"),
        l("load_pass", "numpy"),
        l("load_open", "pickle"),
        l("load_pass", "pickle"),
    ) else {
        let _ = writeln!(out, "Not measured: the script's output lacks load timings.");
        return;
    };
    let _ = writeln!(
        out,
        "`benches/python/bench_save.py` (Python {}, numpy {}, ckpt {}) times each method in the same process, \
         interleaved, the order changing from run to run (A B C D, D C B A, B C D A, A D C B, ...), after an \
         untimed warm-up round that also checks every method round-trips the array; `os.sync()` (untimed) before each save. \
         Each save replaces its own previous file of the same size; `ckpt.save` keeps the file it replaced as \
         the spare that its next save writes over (`CKPT_REUSE_SPACE`, default on). Medians of {} \
         runs.{note}{}\n",
        v["python"].as_str().unwrap_or("?"),
        v["numpy"].as_str().unwrap_or("?"),
        v["ckpt"].as_str().unwrap_or("?"),
        v["runs"].as_u64().unwrap_or(0),
        if o.smoke {
            " Smoke run: the targets are for 1 GiB, the verdicts below mean nothing at this size."
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "| save | durable when it returns | median time | min–max | throughput (median) | time / ckpt |\n\
         |---|---|---|---|---|---|"
    );
    for (label, durable, st) in [
        ("`ckpt.save(arr, path)`", "yes: temporary file, fsync, rename, fsync(dir)", &ck),
        (
            &*format!("the hand-written pickle pattern: `pickle.dump` (protocol {proto}) to `path.tmp`, `os.rename`"),
            "**no** (no fsync: the data may be lost, or the file empty, after a crash)",
            &seed,
        ),
        ("the hand-written pickle pattern made durable: + fsync of the file, fsync(dir)", "yes", &seed_d),
        ("`np.save` to an open file + fsync", "yes, but not atomic (no rename)", &npy),
    ]
    .into_iter()
    .chain(device.as_ref().map(|d| {
        (
            "reference, not a save: `dd` of as many bytes over the blocks of its previous file, `bs=16M \
             oflag=direct conv=notrunc,fsync` (the disk, one 16 MiB request at a time)",
            "yes",
            d,
        )
    })) {
        let _ = writeln!(
            out,
            "| {label} | {durable} | {:.3} s | {:.3}–{:.3} s | {:.2} GB/s | {:.2} |",
            st.median,
            st.min,
            st.max,
            bytes / st.median / 1e9,
            st.median / ck.median
        );
    }
    let (speedup, speedup_d, vs_np) = (seed.median / ck.median, seed_d.median / ck.median, ck.median / npy.median);
    let _ = writeln!(
        out,
        "\nThe hand-written pickle pattern takes **{speedup:.2}×** the time of `ckpt.save` (target ≥ 3: {}; its durable variant \
         {speedup_d:.2}×); `ckpt.save` takes **{vs_np:.2}×** the time of `np.save` + fsync (target ≤ 1.1: {}).",
        met(speedup >= 3.0),
        met(vs_np <= 1.1)
    );
    let unverified = l("load_open", "ckpt_unverified").zip(l("load_pass", "ckpt_unverified"));
    let _ = writeln!(
        out,
        "\n| load (the file is in the page cache: read through once, untimed, before each load) | open | first full \
         pass (`arr.sum()`) | open + pass |\n|---|---|---|---|"
    );
    let mut rows = vec![(
        "`ckpt.load(path, mmap=True)` (verifies every byte, then a read-only view of the mapping)",
        &ck_open,
        &ck_pass,
    )];
    if let Some((open, pass)) = &unverified {
        rows.push((
            "`ckpt.load(path, mmap=True, verify=False)` (structure and pickle stream checked, the array handed out unread)",
            open,
            pass,
        ));
    }
    rows.push(("`np.load(path)`", &np_load, &np_pass));
    rows.push(("`pickle.load` of the pickle file", &pk_load, &pk_pass));
    for (label, a, b) in rows {
        let _ = writeln!(
            out,
            "| {label} | {:.2} ms ({:.2}–{:.2}) | {:.1} ms | {:.1} ms |",
            a.median * 1e3,
            a.min * 1e3,
            a.max * 1e3,
            b.median * 1e3,
            (a.median + b.median) * 1e3
        );
    }
    let verified_ms = ck_open.median * 1e3;
    let (open_ms, open_label) = match &unverified {
        Some((open, _)) => (open.median * 1e3, "`ckpt.load(mmap=True, verify=False)`"),
        None => (verified_ms, "`ckpt.load(mmap=True)`"),
    };
    let (pass_open, pass_pass) = match &unverified {
        Some((open, pass)) => (open.median, pass.median),
        None => (ck_open.median, ck_pass.median),
    };
    let total_ratio = (pass_open + pass_pass) / (np_load.median + np_pass.median);
    let verified_total = (ck_open.median + ck_pass.median) / (np_load.median + np_pass.median);
    let _ = writeln!(
        out,
        "\n{open_label} opens in **{open_ms:.2} ms** (target ≤ 1 ms: {}); with the default full verification \
         (every byte's CRC-32 before anything is unpickled) the open takes {verified_ms:.1} ms ({:.1} GB/s). Open + \
         first full pass cost **{total_ratio:.2}×** `np.load` + the same pass (target ≤ 1.1: {}; verified: \
         {verified_total:.2}×).",
        met(open_ms <= 1.0),
        bytes / ck_open.median / 1e9,
        met(total_ratio <= 1.1)
    );
    let pass_only = pass_pass / np_pass.median;
    let _ = writeln!(
        out,
        "\nFor reference, the pass alone (not the target's comparison, which includes `np.load`'s reading): over \
         the mapped array {pass_only:.2}× the same pass over `np.load`'s array (verified: {:.2}×, the \
         verification having mapped the pages already). An unverified mapped array's first pass maps each \
         page-cache page as it goes (minor faults), where `np.load`'s array is already in anonymous memory.",
        ck_pass.median / np_pass.median
    );
    memory_table(o, (&py, &script), mib, proto, work, out);
    let mut limits = Vec::new();
    if speedup < 3.0 {
        limits.push(format!(
            "against the hand-written pickle pattern: that pattern never waits for the disk (no fsync); its time is pickling \
             (protocol {proto} copies the array into a bytes object) and a copy into the page cache, {:.2} s here. \
             A durable save cannot take less than writing the bytes to the device: ckpt writes the array once, \
             with direct I/O over the blocks of the file it replaced, at {:.2} GB/s ({:.2}× the time of `np.save` + fsync through the page cache, \
             {:.2} GB/s){}. So ≥ 3× holds only in runs where the hand-written pickle pattern takes more than three times the \
             disk's own write; the ratio moves with the speed of pickling and of the page cache (fast when \
             memory is warm, 2-5× slower after the machine sat idle: perf-baselines) from run to run",
            seed.median,
            bytes / ck.median / 1e9,
            vs_np,
            bytes / npy.median / 1e9,
            match &device {
                Some(d) => format!(
                    "; `dd` writing as many bytes with `oflag=direct conv=notrunc,fsync`, in the same rotation, took {:.3} s \
                     ({:.2} GB/s): `ckpt.save` takes {:.2}× that time (it keeps two writes in flight while it copies), and \
                     the hand-written pickle pattern {:.2}×",
                    d.median,
                    bytes / d.median / 1e9,
                    ck.median / d.median,
                    seed.median / d.median
                ),
                None => String::new(),
            }
        ));
    }
    if vs_np > 1.1 {
        limits.push(format!(
            "against `np.save` + fsync ({:.0} ms slower): ckpt copies the array into aligned staging buffers \
             for direct I/O (numpy's data is not 4 KiB-aligned) and computes the CRC-32 of every section, \
             writes the pickle stream, a header page and the section table, and renames the file and fsyncs the \
             directory (atomicity), none of which `np.save` + fsync does",
            (ck.median - npy.median) * 1e3
        ));
    }
    if open_ms > 1.0 {
        limits.push(format!(
            "opening: {open_label} still maps the file and checks the header, the section table and the pickle \
             stream; at {open_ms:.2} ms that fixed cost is above the target"
        ));
    }
    if total_ratio > 1.1 {
        limits.push(
            "the full pass: the mapped array is read through page faults on the file's page-cache pages, while \
             `np.load` reads into fresh memory with large `read` calls"
                .to_string(),
        );
    }
    if !limits.is_empty() {
        let _ = writeln!(out, "\nWhat limits the missed targets: {}.", limits.join("; "));
    }
}

/// Peak extra memory of one save per method, each in a fresh Python process (`bench_save.py --memory`).
fn memory_table(o: &Opts, (py, script): (&Path, &Path), mib: usize, proto: i64, work: &Path, out: &mut String) {
    let runs = o.runs.clamp(1, 3);
    let dir = work.join("python-memory");
    let mut rows = String::new();
    for (method, label) in [
        ("ckpt", "`ckpt.save(arr, path)`"),
        ("pickle_seed", "the hand-written pickle pattern (`pickle.dump`)"),
        ("numpy_fsync", "`np.save` + fsync"),
    ] {
        let mut extra = Vec::new();
        for _ in 0..runs {
            let r = quiet(py)
                .arg(script)
                .args(["--memory", method, &mib.to_string()])
                .arg(&dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .output();
            let v: Option<serde_json::Value> =
                r.ok().filter(|r| r.status.success()).and_then(|r| serde_json::from_slice(&r.stdout).ok());
            let Some(v) = v else {
                let _ = writeln!(out, "\nPeak memory not measured: `{} --memory {method}` failed.", script.display());
                return;
            };
            let (before, peak) = (v["rss_before_kib"].as_f64().unwrap_or(0.0), v["peak_kib"].as_f64().unwrap_or(0.0));
            extra.push((peak - before) / 1024.0);
        }
        let st = stat(extra);
        let _ = writeln!(rows, "| {label} | {:.1} MiB | {:.1}–{:.1} MiB |", st.median, st.min, st.max);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = writeln!(
        out,
        "\nPeak extra memory of one save of the {mib} MiB array, each in a fresh process: the peak resident set \
         during the save (`VmHWM`, reset just before) minus the resident set before it; medians of {runs} runs. \
         The hand-written pickle pattern pickles the array into a bytes object first (protocol {}), so a job near its memory \
         limit can be killed by its own checkpoint.\n\n| save | extra memory (median) | min–max |\n|---|---|---|\n{}",
        proto,
        rows.trim_end()
    );
}
