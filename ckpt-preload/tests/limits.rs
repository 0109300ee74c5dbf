//! Resource limits at restart: a hard limit that was higher at checkpoint time and cannot be raised back
//! (no CAP_SYS_RESOURCE) refuses the restart with a message, before anything of the program runs. (That
//! limits are given back is tested through three restart cycles in cycles.rs.)

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn a_hard_limit_that_cannot_be_raised_back_refuses_the_restart() {
    let (Some(sh), Some(py)) = (which("sh"), python()) else { return };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = if root {
        match which("setpriv") {
            Some(p) => Some(p),
            None => {
                eprintln!("SKIP: running as root without setpriv (root may raise hard limits)");
                return;
            }
        }
    } else {
        None
    };
    let (ckpt, _) = tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = dir.join("img");
    let script = dir.join("spin.py");
    std::fs::write(&script, "import time\nwhile True:\n    time.sleep(0.01)\n").unwrap();
    // The program's hard descriptor limit: 4000, or what this process has if that is lower.
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is writable.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let hard = rl.rlim_max.min(4000);
    assert!(hard > 64, "the hard descriptor limit here is {hard}");
    let mut child = command(&sh, dir)
        .arg("-c")
        .arg(format!("ulimit -n {hard} && exec \"$0\" run --dir \"$1\" -- \"$2\" \"$3\""))
        .arg(&ckpt)
        .arg(&img)
        .arg(&py)
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    kill(child.id(), libc::SIGTERM);
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{:?}", std::fs::read_to_string(dir.join("ckpt.log")));
    assert_eq!(events(dir, "checkpoint").len(), 1);
    // The restart, with a lower hard limit and no way to raise it.
    let lower = hard / 2;
    let mut restart = match &setpriv {
        Some(setpriv) => {
            let mut c = command(setpriv, dir);
            c.args(["--bounding-set=-sys_resource", "--inh-caps=-sys_resource", "--"]).arg(&sh);
            c
        }
        None => command(&sh, dir),
    };
    let mut refused = restart
        .arg("-c")
        .arg(format!("ulimit -n {lower} && exec \"$0\" restart --image-dir \"$1\""))
        .arg(&ckpt)
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("refused.txt")).unwrap()))
        .spawn()
        .unwrap();
    if wait_for_events(dir, "restored", 1, &mut refused, Duration::from_secs(30)) {
        let _ = refused.kill();
        let _ = refused.wait();
        panic!("the program was restored with a lower hard descriptor limit than it had");
    }
    let status = wait_timeout(&mut refused, Duration::from_secs(30));
    let stderr = std::fs::read_to_string(dir.join("refused.txt")).unwrap();
    assert_eq!(status.code(), Some(3), "the restart must be refused (exit 3): {status:?} {stderr}");
    assert!(
        stderr.contains("RLIMIT_NOFILE")
            && stderr.contains(&format!("was {hard}"))
            && stderr.contains(&format!("is {lower}")),
        "the message names the limit and both values: {stderr}"
    );
    assert!(events(dir, "restored").is_empty());
    // Where the limit is as high as it was, the same image restarts (and the program is killed here).
    let mut c = command(&sh, dir);
    let mut child = c
        .arg("-c")
        .arg(format!("ulimit -n {hard} && exec \"$0\" restart --image-dir \"$1\""))
        .arg(&ckpt)
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_events(dir, "restored", 1, &mut child, Duration::from_secs(60)), "no restart at the same limit");
    let _ = child.kill();
    let _ = child.wait();
}
