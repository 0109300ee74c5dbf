//! `ckpt run` and `ckpt restart IMAGE`: the command-line side of the LD_PRELOAD shim (`ckpt-preload`).

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ckpt_core::{Checkpoint, Config, Error, ErrorKind};
use ckpt_image::discover::{check_restartable, discover_image, open_image};
use ckpt_image::tree::{FdSource, PipeContents, TreeMember, TreeProcess, TreeSection};
use ckpt_image::{self as process_image, FdKind, ProcessImage, RegionKind};

use indicatif::HumanBytes;

/// File name of the shim library.
pub const PRELOAD_LIB: &str = "libckpt_preload.so";

/// Where the shim library is: `$CKPT_PRELOAD_LIB`, next to this executable, or in `../lib`.
pub fn find_preload_lib() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("CKPT_PRELOAD_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(std::fs::canonicalize(&p).unwrap_or(p))
        } else {
            Err(Error::new(ErrorKind::NotFound, "CKPT_PRELOAD_LIB does not name a file").with_path(&p))
        };
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("locate the ckpt executable", e))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for cand in [dir.join(PRELOAD_LIB), dir.join("../lib").join(PRELOAD_LIB), dir.join("deps").join(PRELOAD_LIB)] {
        if cand.is_file() {
            return Ok(std::fs::canonicalize(&cand).unwrap_or(cand));
        }
    }
    Err(Error::new(
        ErrorKind::NotFound,
        format!("{PRELOAD_LIB} not found next to {} or in ../lib (set CKPT_PRELOAD_LIB)", exe.display()),
    ))
}

/// Resolves a program name like the shell does (PATH search when it has no slash).
fn resolve_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .unwrap_or(None)
}

/// Whether an ELF file asks for a dynamic loader (`PT_INTERP`): LD_PRELOAD does nothing for static ones.
fn is_dynamic_elf(path: &Path) -> Result<bool, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read the program", e).with_path(path))?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        // A script: its interpreter (a dynamic program, normally) loads the shim.
        return Ok(true);
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(Error::invalid("only 64-bit little-endian (x86_64) programs are supported").with_path(path));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            break;
        }
        if u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `ckpt run`: executes PROGRAM under the shim (this process becomes the program).
pub fn run(interval: Option<&str>, dir: Option<&Path>, command: &[String]) -> Result<ExitCode, Error> {
    use std::os::unix::process::CommandExt;
    let lib = find_preload_lib()?;
    let program = resolve_program(&command[0])
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("{}: command not found", command[0])))?;
    if !is_dynamic_elf(&program)? {
        return Err(Error::invalid(
            "a statically linked program cannot load the LD_PRELOAD shim; link it dynamically or use libckpt",
        )
        .with_path(&program));
    }
    if let Some(i) = interval {
        ckpt_core::parse_ckpt_interval(i).map_err(|e| Error::invalid(format!("--interval: {}", e.message())))?;
    }
    // The same checks the shim will make, so mistakes are reported here.
    let mut cmd = std::process::Command::new(&program);
    cmd.arg0(&command[0]).args(&command[1..]);
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{} {old}", lib.display()),
        _ => lib.display().to_string(),
    };
    cmd.env("LD_PRELOAD", preload);
    // The marker names this process (pid, start time, nonce): the exec keeps both, so the shim is active
    // in the program and in no later process that happens to get its pid.
    let marker = process_image::RootMarker::for_self().map_err(|e| Error::io("read /proc/self/stat", e))?;
    cmd.env(process_image::ROOT_MARKER_VAR, marker.format());
    cmd.env_remove(process_image::IMAGE_FD_VAR).env_remove("CKPT_SHIM_RESTORE").env_remove("CKPT_SHIM_VERIFIED");
    if let Some(i) = interval {
        cmd.env("CKPT_INTERVAL", i);
    }
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create the checkpoint directory", e).with_path(d))?;
        let abs = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
        cmd.env("CKPT_DIR", abs);
    }
    let probe = Config::from_env(None)?; // report malformed CKPT_*/SLURM_* settings before starting
    drop(probe);
    process_image::ForeignFds::parse(std::env::var(process_image::FOREIGN_FDS_VAR).ok().as_deref())
        .map_err(Error::invalid)?;
    set_no_randomize()?;
    let err = cmd.exec();
    Err(Error::io(&format!("run {}", program.display()), err))
}

fn set_no_randomize() -> Result<(), Error> {
    // SAFETY: personality(0xffffffff) only queries; the second call sets a flag of this process.
    unsafe {
        let p = libc::personality(0xffff_ffff);
        if p < 0 || libc::personality((p | libc::ADDR_NO_RANDOMIZE) as libc::c_ulong) < 0 {
            return Err(Error::io("personality(ADDR_NO_RANDOMIZE)", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// `ckpt restart IMAGE` / `ckpt restart --image-dir DIR`: re-executes the saved program so the shim
/// restores the image into it (this process becomes the program). An image of a process tree recreates
/// the tree first (see [`restart_tree`]).
pub fn restart(image: Option<&Path>, image_dir: Option<&Path>) -> Result<ExitCode, Error> {
    let found = match (image, image_dir) {
        (Some(p), _) => open_image(p)?,
        (None, Some(d)) => discover_image(d)?,
        // In a job: the restart directory of this environment (SLURM_RESTART_DIR, CKPT_RESTART_DIR, or the
        // checkpoint directory).
        (None, None) => discover_image(&Config::from_env(None)?.restart_dir)?,
    };
    let path = std::fs::canonicalize(&found.path).unwrap_or(found.path.clone());
    let img = &found.image;
    if let Err(why) = check_restartable(img) {
        eprintln!("ckpt restart: cannot restore {}: {why}", path.display());
        return Ok(ExitCode::from(3));
    }
    if let Err(why) = reapply_stack_limit(img) {
        eprintln!("ckpt restart: cannot restore {}: {why}", path.display());
        return Ok(ExitCode::from(3));
    }
    set_no_randomize()?;
    let cwd = Path::new(OsStr::from_bytes(&img.cwd));
    if let Err(e) = std::env::set_current_dir(cwd) {
        eprintln!("ckpt restart: cannot restore {}: working directory {}: {e}", path.display(), cwd.display());
        return Ok(ExitCode::from(3));
    }
    // The marker names this process, which the exec turns into the program.
    let marker = process_image::RootMarker::for_self().map_err(|e| Error::io("read /proc/self/stat", e))?;
    lead_group_again(&found, &path)?;
    let mut extra = Vec::new();
    if let Some(tree) = read_tree_of(&found, &path)? {
        match restart_tree(&found, &path, &tree, &marker)? {
            Ok(root_extra) => extra = root_extra,
            Err(why) => {
                eprintln!("ckpt restart: cannot restore {}: {why}", path.display());
                return Ok(ExitCode::from(3));
            }
        }
    }
    // Triggers of this job (a requeued job has a new end time): interval ns, deadline unix ns, and the
    // job to ask squeue about in the background when no variable gives the end time.
    let (interval_ns, deadline_ns, lead_ns, query_job) = triggers_now();
    extra.push(format!("CKPT_SHIM_TRIGGERS={interval_ns},{deadline_ns},{lead_ns}"));
    if let Some(job) = query_job {
        extra.push(format!("CKPT_SHIM_QUERY_JOB={job}"));
    }
    let err = exec_image(img, &found.file, &found.token, path.as_os_str().as_bytes(), &marker, extra)?;
    Err(Error::io("execute the saved program", err).with_path(Path::new(&OsString::from_vec(img.exe.clone()))))
}

/// The layout of the address space depends on the stack limit: reapplies the checkpoint's.
fn reapply_stack_limit(img: &ProcessImage) -> Result<(), String> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is writable.
    unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) };
    if rl.rlim_cur != img.rlimit_stack.0 {
        let want = libc::rlimit { rlim_cur: img.rlimit_stack.0, rlim_max: rl.rlim_max };
        // SAFETY: a valid rlimit.
        if img.rlimit_stack.0 > rl.rlim_max || unsafe { libc::setrlimit(libc::RLIMIT_STACK, &want) } != 0 {
            return Err(format!(
                "the checkpoint was taken with a stack limit of {}, and this shell's hard limit ({}) does not allow it",
                show_limit(img.rlimit_stack.0),
                show_limit(rl.rlim_max)
            ));
        }
    }
    Ok(())
}

/// Executes the saved program of `img` with the verified descriptor `file` handed over (above stderr,
/// inherited by the exec only), its saved arguments and environment, the marker and `extra` settings.
/// Returns only on failure.
fn exec_image(
    img: &ProcessImage,
    file: &std::fs::File,
    token: &str,
    label: &[u8],
    marker: &process_image::RootMarker,
    extra: Vec<String>,
) -> Result<std::io::Error, Error> {
    use std::os::fd::AsRawFd;
    // The verified descriptor is handed over (not inherited by anything else: every other descriptor of
    // this process is close-on-exec); above stderr even if this process was started with 0-2 closed.
    // SAFETY: F_DUPFD makes a new descriptor (without FD_CLOEXEC), closed by the exec'd program.
    let handed = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 10) };
    if handed < 0 {
        return Err(Error::io("keep the image open across exec", std::io::Error::last_os_error()));
    }
    let mut env: Vec<CString> = Vec::new();
    for e in &img.envp {
        let key = e.split(|&b| b == b'=').next().unwrap_or(&[]);
        let ours: [&[u8]; 10] = [
            b"CKPT_SHIM_ROOT",
            b"CKPT_SHIM_RESTORE",
            b"CKPT_SHIM_TRIGGERS",
            b"CKPT_SHIM_VERIFIED",
            b"CKPT_SHIM_IMAGE_FD",
            b"CKPT_SHIM_QUERY_JOB",
            b"CKPT_SHIM_GIVEN_FDS",
            b"CKPT_SHIM_TREE_ROOT",
            b"CKPT_SHIM_PIDS",
            b"CKPT_PRELOAD_DISABLE",
        ];
        if ours.contains(&key) {
            continue;
        }
        if let Ok(c) = CString::new(e.clone()) {
            env.push(c);
        }
    }
    let mut all = vec![
        format!("CKPT_SHIM_VERIFIED={token}"),
        format!("{}={handed}", process_image::IMAGE_FD_VAR),
        format!("{}={}", process_image::ROOT_MARKER_VAR, marker.format()),
    ];
    all.extend(extra);
    for x in all {
        env.push(CString::new(x).map_err(|_| Error::invalid("a restart setting contains a NUL byte"))?);
    }
    env.push(
        CString::new([b"CKPT_SHIM_RESTORE=".as_slice(), label].concat())
            .map_err(|_| Error::invalid("NUL in the image's path"))?,
    );
    let argv: Vec<CString> = img.argv.iter().filter_map(|a| CString::new(a.clone()).ok()).collect();
    let exe = CString::new(img.exe.clone()).map_err(|_| Error::invalid("executable path contains NUL"))?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closes the descriptor made above.
    unsafe { libc::close(handed) };
    Ok(err)
}

/// A program that led a process group of its own at checkpoint time (an interactive shell's job, a
/// program started by `setsid`) leads one again, and so do the members of its tree, forked from here
/// after this: a signal to the group it knew, which the shim makes the group it is in now, then reaches
/// the same processes, never the other processes of the job (a batch script's shell). A program that
/// was in another process's group stays in the group this command runs in.
fn lead_group_again(found: &ckpt_image::discover::FoundImage, path: &Path) -> Result<(), Error> {
    let file = found.file.try_clone().map_err(|e| Error::io("dup", e).with_path(path))?;
    let cp = Checkpoint::open_with(&process_image::OpenedFile(file), path, ckpt_core::LoadOptions::new().mmap(false))?;
    let led = process_image::read_group(&cp)? == Some(found.image.pid);
    // SAFETY: getpgrp and getpid take nothing; setpgid(0, 0) makes this process a group leader (it fails
    // only for a session leader, which leads its group already).
    unsafe {
        if led && libc::getpgrp() != libc::getpid() && libc::setpgid(0, 0) != 0 {
            return Err(Error::io("lead a process group again", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The tree section of a verified root image, if it has one.
fn read_tree_of(found: &ckpt_image::discover::FoundImage, path: &Path) -> Result<Option<TreeSection>, Error> {
    let file = found.file.try_clone().map_err(|e| Error::io("dup", e).with_path(path))?;
    let cp = Checkpoint::open_with(&process_image::OpenedFile(file), path, ckpt_core::LoadOptions::new().mmap(false))?;
    process_image::tree::read_tree(&cp, &found.image)
}

/// One member of a tree being restarted.
struct MemberImage {
    record: TreeMember,
    image: ProcessImage,
    pipes: PipeContents,
    /// Its image, in memory (a `memfd`), verified, handed to it like a root's image.
    file: std::fs::File,
    token: String,
}

/// Recreates a process tree before this process becomes its root: every member's image is taken out
/// of the root's (into memory), verified and checked like the root's; pipes are recreated with their
/// unread bytes and shared files opened once; then each member is forked from its parent (top down, so
/// that each process is the parent of its own children again) and executed with its image, and this
/// process's settings for the root's restore are returned. `Ok(Err(why))`: nothing was started.
fn restart_tree(
    found: &ckpt_image::discover::FoundImage,
    path: &Path,
    tree: &TreeSection,
    root_marker: &process_image::RootMarker,
) -> Result<Result<Vec<String>, String>, Error> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let file = found.file.try_clone().map_err(|e| Error::io("dup", e).with_path(path))?;
    let cp = Checkpoint::open_with(&process_image::OpenedFile(file), path, ckpt_core::LoadOptions::new().mmap(false))?;
    let root_pipes = process_image::tree::read_pipes(&cp)?;
    let mut members = Vec::with_capacity(tree.members.len());
    for m in &tree.members {
        let bytes = cp.read(&m.section)?;
        let name = CString::new(format!("ckpt-member-{}", m.pid)).expect("no NUL");
        // SAFETY: memfd_create with a NUL-terminated name; the File owns the descriptor.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: a descriptor just created and owned by nothing else.
        let mut mf = unsafe { std::fs::File::from_raw_fd(fd) };
        mf.write_all(&bytes).map_err(|e| Error::io("copy a member's image", e))?;
        // SAFETY: fchmod on our memfd: only its owner may read it.
        unsafe { libc::fchmod(mf.as_raw_fd(), 0o600) };
        let label = format!("{}#{}", path.display(), m.section);
        let clone = mf.try_clone().map_err(|e| Error::io("dup", e))?;
        let mcp = Checkpoint::open_with(
            &process_image::OpenedFile(clone),
            Path::new(&label),
            ckpt_core::LoadOptions::new().mmap(false),
        )?;
        mcp.verify()?;
        let image = process_image::read(&mcp)?;
        let pipes = process_image::tree::read_pipes(&mcp)?;
        if let Err(why) = check_restartable(&image) {
            return Ok(Err(format!("child process {} ({}): {why}", m.pid, m.comm)));
        }
        let token = process_image::verified_token(&mf.metadata().map_err(|e| Error::io("fstat", e))?);
        members.push(MemberImage { record: m.clone(), image, pipes, file: mf, token });
    }
    let mut processes = vec![TreeProcess { pid: found.image.pid, ppid: 0, image: &found.image, pipes: &root_pipes }];
    processes.extend(members.iter().map(|m| TreeProcess {
        pid: m.record.pid,
        ppid: m.record.ppid,
        image: &m.image,
        pipes: &m.pipes,
    }));
    let fds = match process_image::tree::plan_fds(&processes, &tree.inherited) {
        Ok(f) => f,
        Err(why) => return Ok(Err(why)),
    };
    // The pipes and shared files, made once; every descriptor here is close-on-exec.
    let mut pipes: std::collections::HashMap<u64, (i32, i32)> = std::collections::HashMap::new();
    for p in &fds.pipes {
        let mut ends = [0i32; 2];
        // SAFETY: pipe2 writes two descriptors.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::io("pipe2", std::io::Error::last_os_error()));
        }
        if p.capacity > 0 {
            // SAFETY: fcntl on our pipe.
            unsafe { libc::fcntl(ends[1], libc::F_SETPIPE_SZ, p.capacity as libc::c_int) };
        }
        // SAFETY: the bytes fit the pipe (no more than its capacity at checkpoint time): no blocking.
        unsafe { libc::fcntl(ends[1], libc::F_SETFL, libc::O_NONBLOCK) };
        let mut written = 0;
        while written < p.bytes.len() {
            // SAFETY: writes from our buffer into our pipe.
            let n = unsafe { libc::write(ends[1], p.bytes[written..].as_ptr().cast(), p.bytes.len() - written) };
            if n <= 0 {
                return Ok(Err(format!("pipe {}: cannot put back its {} unread bytes", p.ino, p.bytes.len())));
            }
            written += n as usize;
        }
        // SAFETY: status flags of our pipe's ends, as the program had them.
        unsafe {
            libc::fcntl(ends[0], libc::F_SETFL, p.read_flags & !libc::O_ACCMODE);
            libc::fcntl(ends[1], libc::F_SETFL, p.write_flags & !libc::O_ACCMODE);
        }
        pipes.insert(p.ino, (ends[0], ends[1]));
    }
    let mut opened = Vec::with_capacity(fds.opened.len());
    for o in &fds.opened {
        let c = CString::new(o.path.clone()).map_err(|_| Error::invalid("NUL in a path"))?;
        let flags = (o.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL)) | libc::O_CLOEXEC;
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Ok(Err(format!("{}: {e}", String::from_utf8_lossy(&o.path))));
        }
        // SAFETY: descriptor operations on the file just opened.
        unsafe {
            if o.truncate && libc::ftruncate(fd, o.size as libc::off_t) != 0 {
                let e = std::io::Error::last_os_error();
                return Ok(Err(format!("cut back {}: {e}", String::from_utf8_lossy(&o.path))));
            }
            if o.at_end {
                libc::lseek(fd, 0, libc::SEEK_END);
            } else if o.offset >= 0 {
                libc::lseek(fd, o.offset, libc::SEEK_SET);
            }
        }
        opened.push(fd);
    }
    let source_fd = |s: FdSource| -> i32 {
        match s {
            FdSource::PipeRead(ino) => pipes.get(&ino).map_or(-1, |p| p.0),
            FdSource::PipeWrite(ino) => pipes.get(&ino).map_or(-1, |p| p.1),
            FdSource::Outer(n) => n,
            FdSource::Opened(g) => opened.get(g).copied().unwrap_or(-1),
            // SAFETY: a NUL-terminated path; the descriptor is closed at exec (its duplicate is given).
            FdSource::DevNull(mode) => unsafe { libc::open(c"/dev/null".as_ptr(), mode | libc::O_CLOEXEC) },
        }
    };
    // Settings naming the given descriptors: each is duplicated (not close-on-exec) above 600.
    let given_setting = |list: &[(i32, FdSource)]| -> Result<String, String> {
        let mut parts = Vec::new();
        for &(target, source) in list {
            let from = source_fd(source);
            // SAFETY: F_DUPFD makes a new descriptor (inherited by the exec) from one of ours.
            let d = unsafe { libc::fcntl(from, libc::F_DUPFD, 600) };
            if d < 0 {
                return Err(format!("descriptor {target}: {}", std::io::Error::last_os_error()));
            }
            parts.push(format!("{target}:{d}"));
        }
        Ok(format!("CKPT_SHIM_GIVEN_FDS={}", parts.join(",")))
    };
    // Top down: the root's children from here (the root's process), theirs from each child.
    // SAFETY: getpid has no preconditions.
    let root_now = unsafe { libc::getpid() };
    let mut root_pids = Vec::new();
    for (k, m) in members.iter().enumerate() {
        if m.record.ppid == found.image.pid {
            let pid =
                spawn_member(k, &members, &fds.per_process, &given_setting, root_marker, found.image.pid, root_now)?;
            root_pids.push(format!("{}:{pid}", m.record.pid));
        }
    }
    let mut extra = vec![given_setting(&fds.per_process[0]).map_err(Error::invalid)?];
    if !root_pids.is_empty() {
        extra.push(format!("CKPT_SHIM_PIDS={}", root_pids.join(",")));
    }
    Ok(Ok(extra))
}

/// Builds `CKPT_SHIM_GIVEN_FDS` for a process: its descriptors' sources, duplicated for the exec.
type GivenSetting<'a> = dyn Fn(&[(i32, FdSource)]) -> Result<String, String> + 'a;

/// Forks member `k` (and, from it, its own children), which executes its image; returns its pid.
fn spawn_member(
    k: usize,
    members: &[MemberImage],
    per_process: &[Vec<(i32, FdSource)>],
    given_setting: &GivenSetting<'_>,
    root_marker: &process_image::RootMarker,
    parent_then: i32,
    parent_now: i32,
) -> Result<i32, Error> {
    // SAFETY: fork in this single-threaded command; the child only builds its settings and executes.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io("fork", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        return Ok(pid);
    }
    let m = &members[k];
    let fail = |why: String| -> ! {
        eprintln!("ckpt restart: child process {} ({}): {why}", m.record.pid, m.record.comm);
        // SAFETY: ends this forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(3) }
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut pids = vec![format!("{parent_then}:{parent_now}")];
    for (j, c) in members.iter().enumerate() {
        if c.record.ppid == m.record.pid {
            match spawn_member(j, members, per_process, given_setting, root_marker, m.record.pid, me) {
                Ok(p) => pids.push(format!("{}:{p}", c.record.pid)),
                Err(e) => fail(e.to_string()),
            }
        }
    }
    if let Err(why) = reapply_stack_limit(&m.image) {
        fail(why);
    }
    let cwd = Path::new(OsStr::from_bytes(&m.image.cwd));
    if let Err(e) = std::env::set_current_dir(cwd) {
        fail(format!("working directory {}: {e}", cwd.display()));
    }
    let given = given_setting(&per_process[k + 1]).unwrap_or_else(|why| fail(why));
    let marker = process_image::RootMarker::for_self().unwrap_or_else(|e| fail(format!("/proc/self/stat: {e}")));
    let extra = vec![
        given,
        format!("CKPT_SHIM_TREE_ROOT={}", root_marker.format()),
        format!("CKPT_SHIM_PIDS={}", pids.join(",")),
    ];
    match exec_image(&m.image, &m.file, &m.token, m.record.section.as_bytes(), &marker, extra) {
        Ok(err) => fail(format!("execute {}: {err}", String::from_utf8_lossy(&m.image.exe))),
        Err(e) => fail(e.to_string()),
    }
}

fn show_limit(v: u64) -> String {
    if v == libc::RLIM_INFINITY { "unlimited".into() } else { format!("{} KiB", v / 1024) }
}

/// The interval and the time-limit trigger of the current environment (0 = none), as the shim computes
/// them at start: (interval ns, deadline unix ns, deadline lead ns, job whose end time the shim asks squeue
/// for in the background). squeue is never asked here: a restart does not wait for the controller.
fn triggers_now() -> (u64, u64, u64, Option<String>) {
    let Ok(cfg) = Config::from_env(None) else { return (0, 0, 0, None) };
    let query_job = if cfg.end_time.is_none() { cfg.job_id.clone() } else { None };
    let mut no_query = cfg.clone();
    no_query.job_id = None;
    let plan = ckpt_core::triggers::timer_plan(&no_query);
    let ns = |s: f64| (s * 1e9) as u64;
    // The lead (end time minus checkpoint time) by the same rule, for the background answer.
    const END: f64 = 4_000_000_000.0;
    let mut probe = no_query;
    probe.end_time = Some(END as i64);
    let lead = ckpt_core::triggers::timer_plan(&probe).checkpoint_at.map(|at| (END - at).max(0.0)).unwrap_or(0.0);
    (
        plan.interval.map(|d| d.as_nanos() as u64).unwrap_or(0),
        plan.checkpoint_at.map(ns).unwrap_or(0),
        ns(lead),
        query_job,
    )
}

/// `ckpt inspect` of a process image: the program, the node it needs, its regions and descriptors.
pub fn print_image(cp: &Checkpoint) -> Result<(), Error> {
    let img = process_image::read(cp)?;
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    println!("\nprocess image (LD_PRELOAD shim), layout {}", img.version);
    println!(
        "program     {} {}",
        show(&img.exe),
        img.argv.iter().skip(1).map(|a| show(a)).collect::<Vec<_>>().join(" ")
    );
    println!("cwd         {}", show(&img.cwd));
    println!(
        "node        Linux {} {}, glibc {}, stack limit {}",
        img.fingerprint.kernel_release,
        img.fingerprint.machine,
        img.fingerprint.libc_version,
        show_limit(img.rlimit_stack.0)
    );
    println!(
        "checkpoint  #{} of pid {} on {} (restarts so far {}), program paused {:.2} ms",
        img.sequence,
        img.pid,
        img.host,
        img.restarts,
        img.pause_us as f64 / 1e3
    );
    println!("memory      {} saved of {} mapped", HumanBytes(img.saved_bytes()), HumanBytes(img.mapped_bytes()));
    if let Some(group) = process_image::read_group(cp)? {
        let role = if group == img.pid { "its own, which it leads again on restart" } else { "another process's" };
        println!("group       {group} ({role})");
    }
    let threads = process_image::read_threads(cp, &img)?;
    if !threads.is_empty() {
        let names: Vec<String> = threads
            .iter()
            .map(|t| if t.name.is_empty() { t.tid.to_string() } else { format!("{} ({})", t.tid, show(&t.name)) })
            .collect();
        println!("threads     {}: {}", threads.len(), names.join(", "));
    }
    if let Some(tree) = process_image::tree::read_tree(cp, &img)? {
        let members: Vec<String> =
            tree.members.iter().map(|m| format!("{} {} (parent {})", m.pid, m.comm, m.ppid)).collect();
        println!("processes   {}: the root {} and {}", tree.members.len() + 1, img.pid, members.join(", "));
    }
    let pending = process_image::read_pending(cp)?;
    if pending != process_image::PendingSignals::default() {
        println!(
            "pending     process {:#x}, threads {:?} (signals raised again on restart)",
            pending.shared, pending.threads
        );
    }
    for l in process_image::read_locks(cp, &img)? {
        println!(
            "lock        fd {} {} {}{}",
            l.fd,
            if l.posix { "POSIX" } else { "flock" },
            if l.write { "exclusive" } else { "shared" },
            if l.posix { format!(" bytes {}+{}", l.start, l.len) } else { String::new() }
        );
    }
    println!("{:<33} {:>4} {:<9} {:>10} {:>5}  path", "region", "prot", "kind", "saved", "runs");
    for r in &img.regions {
        let prot = format!(
            "{}{}{}",
            if r.prot & 1 != 0 { 'r' } else { '-' },
            if r.prot & 2 != 0 { 'w' } else { '-' },
            if r.prot & 4 != 0 { 'x' } else { '-' }
        );
        println!(
            "{:016x}-{:016x} {:>4} {:<9} {:>10} {:>5}  {}{}",
            r.start,
            r.end,
            prot,
            format!("{:?}", r.kind),
            HumanBytes(r.runs.iter().map(|x| x.len).sum()),
            r.runs.len(),
            show(&r.path),
            if r.kind == RegionKind::File { format!(" @{:#x}", r.file_offset) } else { String::new() }
        );
    }
    for f in &img.fds {
        println!(
            "fd {:<3} {:<10} flags {:#o} offset {} size {}  {}{}",
            f.fd,
            format!("{:?}", f.kind),
            f.flags,
            f.offset,
            f.size,
            show(&f.path),
            match (f.dup_of, f.kind) {
                (Some(d), _) => format!("  (same open file as fd {d})"),
                (None, FdKind::ForeignNull) => "  (inherited from the launcher: restored as /dev/null)".into(),
                (None, FdKind::ForeignClosed) => "  (inherited from the launcher: restored closed)".into(),
                _ if f.shared => "  (also written by the parent: not cut back on restart)".into(),
                _ => String::new(),
            }
        );
    }
    Ok(())
}

/// The process image as JSON (for `ckpt inspect --json`).
pub fn image_json(cp: &Checkpoint) -> Result<serde_json::Value, Error> {
    let img = process_image::read(cp)?;
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let threads = process_image::read_threads(cp, &img)?;
    let pending = process_image::read_pending(cp)?;
    let locks = process_image::read_locks(cp, &img)?;
    let tree = process_image::tree::read_tree(cp, &img)?.unwrap_or_default();
    Ok(serde_json::json!({
        "layout": img.version,
        "members": tree.members.iter().map(|m| serde_json::json!({"pid": m.pid, "ppid": m.ppid, "comm": m.comm,
            "section": m.section})).collect::<Vec<_>>(),
        "threads": threads.iter().map(|t| serde_json::json!({"tid": t.tid, "name": show(&t.name)})).collect::<Vec<_>>(),
        "pending_signals": {"process": pending.shared, "threads": pending.threads},
        "locks": locks.iter().map(|l| serde_json::json!({"fd": l.fd, "posix": l.posix, "write": l.write,
            "start": l.start, "len": l.len})).collect::<Vec<_>>(),
        "exe": show(&img.exe), "argv": img.argv.iter().map(|a| show(a)).collect::<Vec<_>>(), "cwd": show(&img.cwd),
        "kernel": img.fingerprint.kernel_release, "libc": img.fingerprint.libc_version,
        "rlimit_stack": img.rlimit_stack.0, "sequence": img.sequence, "restarts": img.restarts, "pid": img.pid,
        "process_group": process_image::read_group(cp)?, "pause_us": img.pause_us, "saved_bytes": img.saved_bytes(), "mapped_bytes": img.mapped_bytes(),
        "regions": img.regions.iter().map(|r| serde_json::json!({
            "start": r.start, "end": r.end, "prot": r.prot, "kind": format!("{:?}", r.kind), "path": show(&r.path),
            "file_offset": r.file_offset, "runs": r.runs.len(), "saved_bytes": r.runs.iter().map(|x| x.len).sum::<u64>(),
        })).collect::<Vec<_>>(),
        "fds": img.fds.iter().map(|f| serde_json::json!({
            "fd": f.fd, "kind": format!("{:?}", f.kind), "path": show(&f.path), "flags": f.flags, "offset": f.offset,
            "size": f.size, "dup_of": f.dup_of,
        })).collect::<Vec<_>>(),
    }))
}
