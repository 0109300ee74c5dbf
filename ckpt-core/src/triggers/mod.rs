//! Pieces of the checkpoint triggers: signal lists, the Young/Daly interval, the job's end time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

mod squeue;
pub use squeue::{
    EndTimeReading, EndTimeWatch, SQUEUE_REFRESH, SQUEUE_TIMEOUT, SqueueQuery, query_squeue_end_time, shared_end_time,
    squeue_program,
};

/// Signals that request a checkpoint by default: SIGTERM (checkpoint and exit) and SIGUSR1.
pub const DEFAULT_SIGNALS: &str = "TERM,USR1";
/// Mean time between failures assumed by `interval = auto` when `CKPT_MTBF` is not set (24 hours).
pub const DEFAULT_MTBF: Duration = Duration::from_secs(24 * 3600);
/// Checkpoint cost assumed before the first checkpoint has been measured.
pub const INITIAL_COST_GUESS: Duration = Duration::from_secs(10);
/// Safety factor on the predicted checkpoint cost for the end-of-job checkpoint.
pub const DEFAULT_SAFETY_FACTOR: f64 = 2.0;
/// Extra time kept free before the job's end (`CKPT_MARGIN`).
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(60);

/// One signal that triggers a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalSpec {
    /// The signal number.
    pub signal: i32,
    /// Whether the program should exit after the checkpoint (SIGTERM).
    pub exit: bool,
}

/// The conventional name of a signal number (`USR1`, `RTMIN+3`), for logs and `ckpt env`.
pub fn signal_label(signal: i32) -> String {
    let (min, max) = rt_range();
    if (min..=max).contains(&signal) {
        return format!("RTMIN+{}", signal - min);
    }
    match signal_hook::low_level::signal_name(signal) {
        Some(n) => n.trim_start_matches("SIG").to_string(),
        None => signal.to_string(),
    }
}

fn rt_range() -> (i32, i32) {
    (libc::SIGRTMIN(), libc::SIGRTMAX())
}

/// Parses a `CKPT_SIGNALS` list such as `USR1,USR2,TERM`, `SIGUSR2`, `RTMIN+3` or `10`. SIGTERM means
/// "checkpoint and exit"; every other signal means "checkpoint".
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) naming the entry for an unknown name, a number
/// that is no signal, an `RTMIN+n` / `RTMAX-n` outside the real-time range, or a signal that cannot request checkpoints
/// (`KILL`, `STOP`, the program's faults such as `SEGV`, and `CONT`, `CHLD`, `PIPE`, `ABRT`, `TRAP`).
pub fn parse_signals(text: &str) -> Result<Vec<SignalSpec>> {
    let mut out: Vec<SignalSpec> = Vec::new();
    for raw in text.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
        let name = raw.to_ascii_uppercase();
        let name = name.strip_prefix("SIG").unwrap_or(&name);
        let (min, max) = rt_range();
        let signal = if let Ok(n) = name.parse::<i32>() {
            n
        } else if let Some(off) = name.strip_prefix("RTMIN") {
            min + rt_offset(off, raw)?
        } else if let Some(off) = name.strip_prefix("RTMAX") {
            max - rt_offset(off.replace('-', "+").as_str(), raw)?
        } else {
            match name {
                "TERM" => libc::SIGTERM,
                "USR1" => libc::SIGUSR1,
                "USR2" => libc::SIGUSR2,
                "HUP" => libc::SIGHUP,
                "INT" => libc::SIGINT,
                "QUIT" => libc::SIGQUIT,
                "ALRM" => libc::SIGALRM,
                "XCPU" => libc::SIGXCPU,
                "PWR" => libc::SIGPWR,
                "URG" => libc::SIGURG,
                "WINCH" => libc::SIGWINCH,
                // Named so that the refusal below says why, rather than "unknown".
                "KILL" => libc::SIGKILL,
                "STOP" => libc::SIGSTOP,
                "SEGV" => libc::SIGSEGV,
                "ILL" => libc::SIGILL,
                "FPE" => libc::SIGFPE,
                "BUS" => libc::SIGBUS,
                "TRAP" => libc::SIGTRAP,
                "ABRT" => libc::SIGABRT,
                "CONT" => libc::SIGCONT,
                "CHLD" => libc::SIGCHLD,
                "PIPE" => libc::SIGPIPE,
                _ => return Err(bad_signal(raw, "unknown signal name")),
            }
        };
        if signal <= 0 || signal > max {
            return Err(bad_signal(raw, "no such signal number"));
        }
        // Uncatchable (KILL, STOP), the program's faults (SEGV, BUS, ...), and signals the system sends for
        // other reasons (CONT, CHLD, PIPE, ABRT, TRAP) never ask for a checkpoint.
        let reserved = [libc::SIGCONT, libc::SIGCHLD, libc::SIGPIPE, libc::SIGABRT, libc::SIGTRAP];
        if signal_hook::consts::FORBIDDEN.contains(&signal) || reserved.contains(&signal) {
            return Err(bad_signal(raw, "this signal cannot be used to request checkpoints"));
        }
        if !out.iter().any(|s| s.signal == signal) {
            out.push(SignalSpec { signal, exit: signal == libc::SIGTERM });
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(format!("CKPT_SIGNALS {text:?} names no signal (use e.g. USR1,TERM)")));
    }
    Ok(out)
}

fn rt_offset(off: &str, raw: &str) -> Result<i32> {
    if off.is_empty() {
        return Ok(0);
    }
    let n =
        off.strip_prefix('+').and_then(|n| n.parse::<i32>().ok()).ok_or_else(|| bad_signal(raw, "expected RTMIN+n"))?;
    let (min, max) = rt_range();
    if n < 0 || n > max - min {
        return Err(bad_signal(raw, "real-time signal out of range"));
    }
    Ok(n)
}

fn bad_signal(raw: &str, why: &str) -> Error {
    Error::invalid(format!(
        "CKPT_SIGNALS: {raw:?}: {why} (accepted: names such as TERM, USR1, USR2, SIGHUP, RTMIN+n, RTMAX-n, or numbers)"
    ))
}

/// Daly's optimum checkpoint interval (compute time between checkpoints) for checkpoint cost `cost` and
/// mean time between failures `mtbf`: `sqrt(2CM)(1 + sqrt(C/2M)/3 + (C/2M)/9) - C` when `C < 2M`, else `M`
/// (J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps", 2006).
/// Young's `sqrt(2CM)` is its first term.
pub fn daly_interval(cost: Duration, mtbf: Duration) -> Duration {
    let c = cost.as_secs_f64().max(1e-3);
    let m = mtbf.as_secs_f64().max(1.0);
    if c >= 2.0 * m {
        return mtbf;
    }
    let r = c / (2.0 * m);
    let t = (2.0 * c * m).sqrt() * (1.0 + r.sqrt() / 3.0 + r / 9.0) - c;
    Duration::from_secs_f64(t.max(1.0))
}

/// Exponentially weighted moving average of measured checkpoint costs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CostEstimate {
    smoothed: Option<f64>,
    last: Option<f64>,
}

impl CostEstimate {
    /// Folds in one measured cost.
    pub fn record(&mut self, cost: Duration) {
        let c = cost.as_secs_f64();
        self.last = Some(c);
        self.smoothed = Some(match self.smoothed {
            None => c,
            Some(s) => 0.7 * s + 0.3 * c,
        });
    }
    /// The predicted cost of the next checkpoint: the larger of the smoothed and the last cost (state
    /// tends to grow), or `None` before any measurement.
    pub fn predict(&self) -> Option<Duration> {
        match (self.smoothed, self.last) {
            (Some(s), Some(l)) => Some(Duration::from_secs_f64(s.max(l))),
            _ => None,
        }
    }
}

/// Where the job's end time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndTimeSource {
    /// `SLURM_JOB_END_TIME` (Slurm 23.02 and later).
    SlurmEnv,
    /// `squeue -h -j $SLURM_JOB_ID -o %e` (older Slurm).
    Squeue,
    /// `CKPT_END_TIME`.
    CkptEnv,
}

impl EndTimeSource {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EndTimeSource::SlurmEnv => "SLURM_JOB_END_TIME",
            EndTimeSource::Squeue => "squeue",
            EndTimeSource::CkptEnv => "CKPT_END_TIME",
        }
    }
}

/// Parses Slurm's `YYYY-MM-DDTHH:MM:SS` (local time) into seconds since the epoch.
pub fn parse_slurm_timestamp(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once('T')?;
    let d: Vec<i32> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i32> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    // SAFETY: `tm` is a plain C struct, fully initialised here (zeroed, then the fields mktime reads);
    // mktime only reads and normalises it.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = d[0] - 1900;
        tm.tm_mon = d[1] - 1;
        tm.tm_mday = d[2];
        tm.tm_hour = t[0];
        tm.tm_min = t[1];
        tm.tm_sec = t[2];
        tm.tm_isdst = -1;
        let secs = libc::mktime(&mut tm);
        (secs != -1).then_some(secs)
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// When to checkpoint a process that cannot poll (an unmodified program under the `LD_PRELOAD` shim): kernel
/// timers are armed from this, at start and again after each restart (with the restarted job's values).
#[derive(Clone, Debug, PartialEq)]
pub struct TimerPlan {
    /// Period of the interval checkpoints (`auto`: Young/Daly from the initial cost guess and `CKPT_MTBF`).
    pub interval: Option<Duration>,
    /// The job's end (unix seconds) and where it came from.
    pub end_time: Option<(f64, &'static str)>,
    /// Why the end time is unknown although the job has an id (no shared squeue answer yet, or squeue failed).
    pub end_time_error: Option<String>,
    /// When to checkpoint and exit (unix seconds): the end minus the margin and the safety factor times the
    /// initial cost guess.
    pub checkpoint_at: Option<f64>,
}

/// The [`TimerPlan`] of a configuration. Never runs squeue and never waits: without `SLURM_JOB_END_TIME`
/// or `CKPT_END_TIME`, the end time is the node's fresh shared squeue answer for the job
/// ([`shared_end_time`]), if a process of the job published one; otherwise it is unknown here (say so in
/// `end_time_error`) and a background [`EndTimeWatch`] can learn it later.
pub fn timer_plan(cfg: &crate::Config) -> TimerPlan {
    let interval = match cfg.interval {
        Some(crate::Interval::Every(d)) => Some(d),
        Some(crate::Interval::Auto) => Some(daly_interval(INITIAL_COST_GUESS, cfg.mtbf)),
        None => None,
    };
    let mut end_time_error = None;
    let end_time = match cfg.end_time {
        Some(t) => Some((t as f64, cfg.end_time_source.unwrap_or(EndTimeSource::CkptEnv).as_str())),
        None => cfg.job_id.as_ref().and_then(|job| {
            match cfg.socket_dir.as_deref().and_then(|d| shared_end_time(d, job, cfg.restart_count)) {
                Some(EndTimeReading { end_time: Some(t), .. }) => Some((t as f64, EndTimeSource::Squeue.as_str())),
                Some(EndTimeReading { error, .. }) => {
                    end_time_error = Some(error.unwrap_or_else(|| "squeue reports no end time for the job".into()));
                    None
                }
                None => {
                    end_time_error = Some(
                        "not known at start: SLURM_JOB_END_TIME is not set and no process of this job on this node \
                         has published a squeue answer yet (squeue is never run at start)"
                            .into(),
                    );
                    None
                }
            }
        }),
    };
    let lead = INITIAL_COST_GUESS.as_secs_f64() * cfg.safety_factor + cfg.margin.as_secs_f64();
    let checkpoint_at = end_time.map(|(e, _)| (e - lead).max(0.0));
    TimerPlan { interval, end_time, end_time_error, checkpoint_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_lists() {
        let s = parse_signals("USR1,USR2,TERM").unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.iter().any(|x| x.signal == libc::SIGTERM && x.exit));
        assert!(s.iter().any(|x| x.signal == libc::SIGUSR1 && !x.exit));
        let s = parse_signals("sigusr2, RTMIN+3").unwrap();
        assert_eq!(s[0].signal, libc::SIGUSR2);
        assert_eq!(s[1].signal, libc::SIGRTMIN() + 3);
        assert_eq!(signal_label(s[1].signal), "RTMIN+3");
        assert_eq!(parse_signals("RTMAX-1").unwrap()[0].signal, libc::SIGRTMAX() - 1);
        assert_eq!(parse_signals("10").unwrap()[0].signal, 10);
        assert_eq!(parse_signals("USR1,USR1").unwrap().len(), 1);
        for bad in ["KILL", "STOP", "SEGV", "FOO", "", "RTMIN+999", "0", "CONT"] {
            let e = parse_signals(bad).unwrap_err();
            assert!(e.to_string().contains("CKPT_SIGNALS"), "{bad}: {e}");
        }
        for reserved in ["KILL", "SIGSTOP", "SEGV", "9", "PIPE", "CHLD"] {
            let e = parse_signals(reserved).unwrap_err().to_string();
            assert!(e.contains("cannot be used"), "{reserved}: {e}");
        }
        assert_eq!(signal_label(libc::SIGUSR1), "USR1");
    }

    #[test]
    fn daly() {
        // C = 60 s, M = 24 h: sqrt(2CM) = 3220 s, corrections small.
        let t = daly_interval(Duration::from_secs(60), Duration::from_secs(86_400)).as_secs_f64();
        assert!((3150.0..3250.0).contains(&t), "{t}"); // 3219.9 * 1.006 - 60
        assert_eq!(daly_interval(Duration::from_secs(100), Duration::from_secs(10)), Duration::from_secs(10));
    }

    #[test]
    fn cost_estimate() {
        let mut c = CostEstimate::default();
        assert_eq!(c.predict(), None);
        c.record(Duration::from_secs(10));
        c.record(Duration::from_secs(2));
        let p = c.predict().unwrap().as_secs_f64();
        assert!((7.5..7.7).contains(&p), "{p}");
        c.record(Duration::from_secs(20));
        assert_eq!(c.predict().unwrap(), Duration::from_secs(20));
    }

    #[test]
    #[cfg_attr(miri, ignore = "calls mktime, a foreign function Miri cannot run")]
    fn slurm_timestamps() {
        let a = parse_slurm_timestamp("2026-11-25T18:00:00").unwrap();
        let b = parse_slurm_timestamp("2026-11-25T18:01:05").unwrap();
        assert_eq!(b - a, 65);
        assert!(parse_slurm_timestamp("Unknown").is_none());
        assert!(parse_slurm_timestamp("2026-11-25 18:00:00").is_none());
    }

    #[test]
    fn timer_plan_from_variables() {
        let vars = [("CKPT_INTERVAL", "0:0:30"), ("CKPT_END_TIME", "2000000000"), ("CKPT_MARGIN", "5")];
        let cfg =
            crate::Config::from_lookup(Some("t"), |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
                .unwrap();
        let plan = timer_plan(&cfg);
        assert_eq!(plan.interval, Some(Duration::from_secs(30)));
        assert_eq!(plan.end_time, Some((2e9, "CKPT_END_TIME")));
        // 5 s of margin + the default safety factor (2) x the 10 s initial cost guess.
        assert_eq!(plan.checkpoint_at, Some(2e9 - 25.0));
        let none = timer_plan(&crate::Config::from_lookup(Some("t"), |_| None).unwrap());
        assert_eq!((none.interval, none.end_time, none.checkpoint_at), (None, None, None));
    }
}
