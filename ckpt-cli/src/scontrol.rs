//! Running `scontrol` (`CKPT_SCONTROL`) with a bound on its time: a Slurm controller that hangs must not
//! hang the end of a job, which has only Slurm's KillWait (30 s by default) between SIGTERM and SIGKILL.

use std::ffi::OsString;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ckpt_core::{Error, ErrorKind};

/// How long `scontrol` may take before it is killed: more than scontrol's own message timeout (10 s by
/// default), and `ckpt job`'s two calls after a SIGTERM (the reason, then the requeue) fit in Slurm's
/// default KillWait.
pub(crate) const SCONTROL_TIMEOUT: Duration = Duration::from_secs(12);

/// The program: `CKPT_SCONTROL`, or `scontrol` on the PATH.
pub(crate) fn program() -> OsString {
    std::env::var_os("CKPT_SCONTROL").filter(|p| !p.is_empty()).unwrap_or_else(|| "scontrol".into())
}

/// What `scontrol ARGS` printed on stdout, when it exited with status 0 within `timeout`. Its stderr goes
/// to ours (Slurm's own reasons land in the job's log). Not answering in time kills it and is an error
/// that says so.
pub(crate) fn run(args: &[&str], timeout: Duration) -> Result<String, Error> {
    let prog = program();
    let shown = format!("`{} {}`", prog.to_string_lossy(), args.join(" "));
    let mut child = Command::new(&prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(ErrorKind::NotFound, format!("cannot run {shown}: {e}")))?;
    // Read its output beside the wait: a full pipe must not stall it.
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                // Its own children may hold the pipe open: the reader is left behind, not joined.
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{shown} did not answer within {} s (killed): is the Slurm controller up?",
                        timeout.as_secs()
                    ),
                ));
            }
            Err(e) => return Err(Error::io(&format!("wait for {shown}"), e)),
        }
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::new(ErrorKind::Io, format!("{shown} failed: {status}")));
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Blocks SIGTERM in this process from here on. `ckpt requeue` takes it this way: `scontrol requeue`
/// makes Slurm send SIGTERM to every process of the job, this one too, which would otherwise end before
/// saying that it requeued the job. A process started later gets an empty signal mask (Rust's `Command`
/// resets it), so scontrol itself still takes SIGTERM.
pub(crate) fn hold_sigterm() {
    // SAFETY: a sigset_t initialised by sigemptyset, a valid signal number, and a null old-set pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
