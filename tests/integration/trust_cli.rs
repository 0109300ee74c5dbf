//! `ckpt create` trusts nothing in the control-socket directory it has not checked: a directory another
//! user created first (or one open to others, or a symlink) is refused before anything in it is read,
//! connected to or signalled; a socket whose listener is another user is refused; a registration is
//! followed by a signal only when it names a live process of ours that really is the registered one
//! (start time); request files are created afresh and never through a symlink.
//!
//! Tests that need a second user run the attacker's steps as `ckpt-other` (`runuser`); without root or
//! without that user they are skipped with a reason, except under CI=true, where they fail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ckpt_tests::{ckpt_cli, clean_command, output_text as text};

const OTHER: &str = "ckpt-other";

/// The second user's uid, or None (skip) with the reason printed; under CI=true a missing user fails.
fn other_user(test: &str) -> Option<u32> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let uid = Command::new("id")
        .args(["-u", OTHER])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok());
    let why = match (root, uid) {
        (true, Some(uid)) => return Some(uid),
        (false, _) => "not running as root",
        (true, None) => "no user named ckpt-other (useradd -M -r ckpt-other)",
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run the two-user scenario under CI: {why}");
    }
    eprintln!("skipped {test}: {why}");
    None
}

/// Runs `script` with `sh -c` as the second user.
fn as_other(script: &str) -> Output {
    let o = Command::new("runuser").args(["-u", OTHER, "--", "sh", "-c", script]).output().expect("runuser");
    assert!(o.status.success(), "as {OTHER}: {script}: {}", text(&o));
    o
}

/// `ckpt create TARGET ...` with the socket directory `sock`.
fn create(dir: &Path, sock: &Path, args: &[&str]) -> Output {
    let mut cmd = clean_command(&ckpt_cli(), dir);
    cmd.arg("create").args(args).env("CKPT_SOCKET_DIR", sock);
    cmd.output().expect("run ckpt")
}

/// A process of ours that knows nothing of ckpt (what an attacker would like us to kill).
struct Victim(Child);
impl Victim {
    fn spawn() -> Victim {
        Victim(Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("sleep"))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("wait").is_none()
    }
}
impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn private_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn start_time(pid: u32) -> u64 {
    ckpt_image::process_start_time(pid).unwrap()
}

fn registration(signal: i32, start: u64) -> String {
    ckpt_image::Registration { signal, exit_signal: 15, start, boot: ckpt_image::boot_id().unwrap() }.format()
}

/// The whole attack of the issue: another user creates `$TMPDIR/ckpt-<uid>` first and fills it with a
/// registration naming one of our processes with SIGKILL and a symlink at the request file's name
/// pointing to one of our files. `ckpt create` refuses the directory, names it and the owner, kills
/// nothing and writes nothing.
#[test]
fn a_socket_directory_created_by_another_user_is_refused() {
    let Some(other) = other_user("a_socket_directory_created_by_another_user_is_refused") else { return };
    let t = tempfile::tempdir().unwrap();
    // A shared scratch directory (like /tmp): everybody may create in it.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = t.path().join("ckpt-0");
    let precious = t.path().join("precious.txt");
    std::fs::write(&precious, b"results of a week").unwrap();
    let mut victim = Victim::spawn();
    let stem = format!("{}.-.-", victim.pid());
    as_other(&format!(
        "mkdir -m 0777 {s} && printf 'signal=9\\nexit_signal=9\\n' > {s}/{stem}.shim && ln -s {p} {s}/{stem}.request \
         && ln -s {p} {s}/{stem}.reply-pending",
        s = sock.display(),
        p = precious.display()
    ));
    let o = create(t.path(), &sock, &[&victim.pid().to_string(), "--max-wait", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(sock.to_str().unwrap()) && err.contains(&format!("belongs to uid {other}")), "{}", text(&o));
    assert!(victim.alive(), "ckpt create killed an unrelated process of ours: {}", text(&o));
    assert_eq!(std::fs::read(&precious).unwrap(), b"results of a week", "a symlinked request file was followed");
}

/// Our own directory, but open to others (mode 0755) or a symlink: refused the same way (no other user
/// needed).
#[test]
fn a_socket_directory_open_to_others_or_a_symlink_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut victim = Victim::spawn();
    let sock = t.path().join("sock");
    private_dir(&sock);
    std::fs::write(sock.join(format!("{}.-.-.shim", victim.pid())), registration(9, start_time(victim.pid()))).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = create(t.path(), &sock, &[&victim.pid().to_string(), "--max-wait", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("mode 755"), "{}", text(&o));
    assert!(victim.alive(), "{}", text(&o));
    // A symlink to a private directory of ours is refused too (it could be re-pointed at any time).
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&sock, &link).unwrap();
    let o = create(t.path(), &link, &[&victim.pid().to_string(), "--max-wait", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("symlink"), "{}", text(&o));
    assert!(victim.alive(), "{}", text(&o));
}

/// Registrations in our own private directory that do not name the registered process: a pid reused by
/// another process of ours (another start time), and an older shim's registration (no start time). No
/// signal is sent.
#[test]
fn a_registration_is_signalled_only_when_it_names_the_registered_process() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("sock");
    private_dir(&sock);
    let mut victim = Victim::spawn();
    let pid = victim.pid().to_string();
    let reg = sock.join(format!("{pid}.-.-.shim"));
    // An older shim's file: it cannot say which process it meant.
    std::fs::write(&reg, "signal=9\nexit_signal=15\n").unwrap();
    let o = create(t.path(), &sock, &[&pid, "--max-wait", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("older shim"), "{}", text(&o));
    assert!(victim.alive(), "an old registration's signal reached the process: {}", text(&o));
    // The registered process is gone and its pid now belongs to this one: other start time.
    std::fs::write(&reg, registration(9, start_time(victim.pid()) + 1)).unwrap();
    let o = create(t.path(), &sock, &[&pid, "--max-wait", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not signalling") && err.contains("another process"), "{}", text(&o));
    assert!(err.contains(reg.to_str().unwrap()), "the message names the registration: {}", text(&o));
    assert!(victim.alive(), "a reused pid was signalled: {}", text(&o));
}

/// A registration of the right process, but symlinks planted at the request and reply-pending names:
/// they are replaced, never followed (the files they point to keep their contents).
#[test]
fn request_files_are_created_afresh_never_through_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("sock");
    private_dir(&sock);
    let mut harmless = Victim::spawn();
    let stem = format!("{}.-.-", harmless.pid());
    // SIGCONT: the process does not care; nobody answers, so the request times out.
    std::fs::write(sock.join(format!("{stem}.shim")), registration(libc::SIGCONT, start_time(harmless.pid()))).unwrap();
    let (p1, p2) = (t.path().join("precious1"), t.path().join("precious2"));
    std::fs::write(&p1, b"one").unwrap();
    std::fs::write(&p2, b"two").unwrap();
    std::os::unix::fs::symlink(&p1, sock.join(format!("{stem}.request"))).unwrap();
    std::os::unix::fs::symlink(&p2, sock.join(format!("{stem}.reply-pending"))).unwrap();
    let images = t.path().join("images");
    let o = create(
        t.path(),
        &sock,
        &[&harmless.pid().to_string(), "--max-wait", "1", "--image-dir", images.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no checkpoint within"), "{}", text(&o));
    assert_eq!(std::fs::read(&p1).unwrap(), b"one", "the request was written through a symlink");
    assert_eq!(std::fs::read(&p2).unwrap(), b"two", "the reply marker was written through a symlink");
    assert!(harmless.alive());
    let left: Vec<_> = std::fs::read_dir(&sock).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "only the registration is left: {left:?}");
}

/// A socket whose listener runs as another user (moved into our private directory, as a directory
/// created by someone else would hold it) answers "ok" to anything: its answer is refused (SO_PEERCRED
/// on the requesting side); a registration naming another user's process is not signalled (root could).
#[test]
fn another_users_listener_or_process_is_refused() {
    let Some(other) = other_user("another_users_listener_or_process_is_refused") else { return };
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = t.path().join("sock");
    private_dir(&sock);
    let theirs = t.path().join("theirs");
    let server = r#"import socket,sys
s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
while True:
    c,_=s.accept()
    try: c.recv(4096); c.sendall(b'{"ok":true,"path":"/forged.ckpt","generation":1,"step":1}\n')
    except OSError: pass
    c.close()"#;
    as_other(&format!("mkdir -m 0755 {}", theirs.display()));
    let evil = theirs.join("evil.sock");
    let gid = Command::new("id").args(["-g", OTHER]).output().unwrap();
    let gid = String::from_utf8_lossy(&gid.stdout).trim().to_string();
    let listener = Command::new("setpriv")
        .args([format!("--reuid={other}"), format!("--regid={gid}"), "--clear-groups".into()])
        .args(["python3", "-c", server])
        .arg(&evil)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .spawn()
        .expect("setpriv python3");
    // setpriv execs: the child is the listener (killed on the way out, whatever happens).
    let mut listener = Victim(listener);
    let pid = listener.pid();
    let t0 = Instant::now();
    while !evil.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the other user's listener never bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    let planted: PathBuf = sock.join(format!("{pid}.-.-.sock"));
    std::fs::rename(&evil, &planted).unwrap();
    let o = create(t.path(), &sock, &[&pid.to_string(), "--max-wait", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("forged"), "a forged answer was reported: {}", text(&o));
    assert!(err.contains(&format!("runs as uid {other}")) && err.contains(planted.to_str().unwrap()), "{}", text(&o));
    std::fs::remove_file(&planted).unwrap();
    // A registration (in our directory, with the right start time) naming the other user's process.
    std::fs::write(sock.join(format!("{pid}.-.-.shim")), registration(9, start_time(pid))).unwrap();
    let o = create(t.path(), &sock, &[&pid.to_string(), "--max-wait", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not your process"), "{}", text(&o));
    assert!(listener.alive(), "another user's process was signalled: {}", text(&o));
}
