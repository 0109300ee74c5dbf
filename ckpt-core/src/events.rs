//! The events of the structured log, one JSON object a line (`"event"` names the kind).
//!
//! The checkpointer adds `ts`, `rank` and `checkpoint` to every line ([`line`]). The keys come out in
//! alphabetical order, as they always have (the lines go through `serde_json::Value`): programs and
//! tests parse these lines, and some compare them as text.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, Interval, parse_ckpt_interval, parse_interval};

/// One log line's event.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(crate) enum Event<'a> {
    /// The checkpointer started.
    Start {
        pid: u32,
        job_id: Option<&'a str>,
        step_id: Option<u32>,
        nranks: u32,
        checkpoint_dir: &'a Path,
        restart_dir: &'a Path,
        /// Seconds, `"auto"`, or `null` (no interval).
        interval: Option<IntervalSetting>,
        /// The same in words, with the setting it came from ([`Config::interval_in_words`]).
        interval_description: String,
        signals: Vec<String>,
        end_time: Option<f64>,
        end_time_source: Option<&'static str>,
        restart_count: Option<u32>,
        socket: Option<&'a Path>,
    },
    /// A checkpoint became due.
    Trigger(Trigger<'a>),
    /// squeue told the job's end time, or failed to.
    EndTime(EndTime<'a>),
    /// A `ckpt create` request that was not taken.
    RequestRefused { error: String },
    /// Something went wrong that costs no checkpoint.
    Warning { message: String },
    /// What processes that died left in the socket directory was removed.
    Cleanup { message: &'static str, directory: Option<&'a Path>, removed: &'a [String] },
    /// The outcome of restart discovery.
    Restore(Restore<'a>),
    /// A checkpoint was committed.
    Checkpoint {
        trigger: Vec<&'static str>,
        step: u64,
        generation: u64,
        path: &'a Path,
        bytes: u64,
        raw_bytes: u64,
        seconds: f64,
        #[serde(rename = "bandwidth_MBps")]
        bandwidth_mbps: f64,
        time_left_s: Option<f64>,
        interval_s: Option<f64>,
        exit: bool,
        warnings: &'a [String],
        /// `"cache"` when committed to the cache level (durable once `flushed`), else `"shared"`.
        level: &'static str,
    },
    /// The cache level in front of the checkpoint directory (after `start`).
    Levels { cache_dir: &'a Path, cache_keep: usize, flush: String, flush_timeout_s: f64 },
    /// A cached checkpoint was copied to the checkpoint directory and verified there: it is durable.
    Flushed {
        step: u64,
        generation: u64,
        path: &'a Path,
        bytes: u64,
        seconds: f64,
        #[serde(rename = "bandwidth_MBps")]
        bandwidth_mbps: f64,
        exit: bool,
        warnings: &'a [String],
    },
    /// A cached checkpoint could not be copied to the checkpoint directory (it stays in the cache).
    FlushFailed { generation: u64, error: String, exit: bool },
    /// The program's end waited for the copies to the checkpoint directory.
    FlushWait { seconds: f64, complete: bool, durable_generation: Option<u64> },
    /// A checkpoint could not be written.
    CheckpointFailed { trigger: Vec<&'static str>, error: String },
    /// Removing this rank's retired parts after a step warned.
    PruneParts { warnings: &'a [String] },
    /// A multi-rank step was committed.
    StepCommitted {
        step: u64,
        generation: u64,
        /// What the step took on this rank after its part was durable (the gather, rank 0's commit, the
        /// copies to partner nodes).
        seconds: f64,
    },
    /// The checkpointer was dropped.
    Finish,
}

/// The interval setting as the start event shows it: seconds, or `"auto"`.
pub(crate) struct IntervalSetting(pub(crate) Interval);

impl Serialize for IntervalSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Interval::Every(d) => s.serialize_f64(d.as_secs_f64()),
            Interval::Auto => s.serialize_str("auto"),
        }
    }
}

impl Config {
    /// The effective interval in words, with the setting it came from, as the log's start event and
    /// `ckpt env` say it: `checkpoint every 2 minutes (CKPT_INTERVAL=2, Slurm's format: minutes)`,
    /// `checkpoint every 30 seconds (CKPT_INTERVAL=30s)`, `no periodic checkpoints (CKPT_INTERVAL and
    /// SLURM_CHECKPOINT are not set)`. A user who meant seconds and wrote a bare number sees minutes here.
    pub fn interval_in_words(&self) -> String {
        // The setting is named only when it still gives this interval (the field may have been changed).
        let from = self.interval_from.as_ref().filter(|(var, text)| {
            let parsed = if var == "SLURM_CHECKPOINT" { parse_interval(text) } else { parse_ckpt_interval(text) };
            parsed.ok() == Some(self.interval)
        });
        let setting = from.map(|(var, text)| match slurm_form(text) {
            Some(form) => format!("{var}={text}, Slurm's format: {form}"),
            None => format!("{var}={text}"),
        });
        match (self.interval, setting) {
            (Some(Interval::Every(d)), Some(set)) => format!("checkpoint every {} ({set})", duration_in_words(d)),
            (Some(Interval::Every(d)), None) => format!("checkpoint every {}", duration_in_words(d)),
            (Some(Interval::Auto), set) => format!(
                "checkpoint interval from the measured cost and a mean time between failures of {} (Young/Daly{})",
                duration_in_words(self.mtbf),
                set.map(|s| format!("; {s}")).unwrap_or_default()
            ),
            (None, Some(set)) => format!("no periodic checkpoints ({set})"),
            (None, None) => "no periodic checkpoints (CKPT_INTERVAL and SLURM_CHECKPOINT are not set)".to_string(),
        }
    }
}

/// Which of Slurm's six time formats `text` is written in (`"minutes"`, `"days-hours:minutes"`...), or
/// `None` for anything else (units, `auto`, `off`).
fn slurm_form(text: &str) -> Option<&'static str> {
    let t = text.trim();
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '-') || t == "0" {
        return None;
    }
    let colons = t.matches(':').count();
    Some(match (t.contains('-'), colons) {
        (false, 0) => "minutes",
        (false, 1) => "minutes:seconds",
        (false, _) => "hours:minutes:seconds",
        (true, 0) => "days-hours",
        (true, 1) => "days-hours:minutes",
        (true, _) => "days-hours:minutes:seconds",
    })
}

/// `2 minutes`, `1 hour 30 minutes`, `1 day 2 hours 3 minutes 4 seconds`, `0.5 seconds`.
fn duration_in_words(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 || (d.subsec_nanos() != 0 && secs < 60) {
        let s = d.as_secs_f64();
        return format!("{s} second{}", if s == 1.0 { "" } else { "s" });
    }
    let parts: Vec<String> =
        [(secs / 86_400, "day"), (secs / 3600 % 24, "hour"), (secs / 60 % 60, "minute"), (secs % 60, "second")]
            .into_iter()
            .filter(|&(n, _)| n > 0)
            .map(|(n, unit)| format!("{n} {unit}{}", if n == 1 { "" } else { "s" }))
            .collect();
    parts.join(" ")
}

/// Why a checkpoint became due (`"reason"`).
#[derive(Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub(crate) enum Trigger<'a> {
    /// The interval passed.
    Interval { interval_s: f64 },
    /// The job's time limit is near.
    TimeLimit {
        time_left_s: f64,
        predicted_cost_s: Option<f64>,
        safety_factor: f64,
        margin_s: f64,
        end_time: f64,
        end_time_source: &'static str,
    },
    /// A `ckpt create` request.
    Request { image_dir: Option<&'a Path>, vacate: bool },
}

/// An answer of squeue.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum EndTime<'a> {
    /// The end time changed.
    Known { source: &'static str, end_time: f64, time_left_s: f64, shared: bool },
    /// squeue failed.
    Failed { source: &'static str, error: &'a str, shared: bool },
}

/// What restart discovery found.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum Restore<'a> {
    /// A checkpoint to resume from.
    Found {
        path: &'a Path,
        generation: u64,
        step: u64,
        other_job: Option<&'a str>,
        rejected: Vec<Rejected<'a>>,
        notices: &'a [String],
    },
    /// None: a fresh start (`path` is `null`).
    Nothing { path: Option<&'a Path>, message: &'static str, notices: &'a [String] },
    /// Discovery failed.
    Failed { error: String },
}

/// A candidate that restart discovery passed over, and why.
#[derive(Serialize)]
pub(crate) struct Rejected<'a> {
    pub(crate) path: &'a Path,
    pub(crate) error: String,
}

/// The log line of `event`, with the fields every line carries.
pub(crate) fn line(event: &impl Serialize, ts: f64, rank: u32, checkpoint: &str) -> String {
    let mut value = serde_json::to_value(event).unwrap_or_else(|e| Value::String(e.to_string()));
    if let Value::Object(map) = &mut value {
        map.insert("ts".into(), ts.into());
        map.insert("rank".into(), rank.into());
        map.insert("checkpoint".into(), checkpoint.into());
    }
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    /// The typed events write what the `json!` values they replaced wrote, byte for byte.
    #[test]
    fn events_write_the_lines_they_always_wrote() {
        let line_of = |v: Value| line(&v, 1.5, 3, "app");
        let p = PathBuf::from("/d/app.ckpt");
        let warnings = vec!["w".to_string()];
        let cases: Vec<(Event, Value)> = vec![
            (
                Event::Trigger(Trigger::Interval { interval_s: 2.5 }),
                json!({"event": "trigger", "reason": "interval", "interval_s": 2.5}),
            ),
            (
                Event::Trigger(Trigger::TimeLimit {
                    time_left_s: 9.0,
                    predicted_cost_s: None,
                    safety_factor: 1.5,
                    margin_s: 5.0,
                    end_time: 1e9,
                    end_time_source: "squeue",
                }),
                json!({"event": "trigger", "reason": "time-limit", "time_left_s": 9.0, "predicted_cost_s": null,
                    "safety_factor": 1.5, "margin_s": 5.0, "end_time": 1e9, "end_time_source": "squeue"}),
            ),
            (
                Event::Trigger(Trigger::Request { image_dir: None, vacate: true }),
                json!({"event": "trigger", "reason": "request", "image_dir": null, "vacate": true}),
            ),
            (
                Event::EndTime(EndTime::Failed { source: "squeue", error: "x", shared: false }),
                json!({"event": "end-time", "source": "squeue", "error": "x", "shared": false}),
            ),
            (
                Event::Restore(Restore::Nothing { path: None, message: "no checkpoint: fresh start", notices: &[] }),
                json!({"event": "restore", "path": null, "message": "no checkpoint: fresh start", "notices": []}),
            ),
            (
                Event::Restore(Restore::Found {
                    path: &p,
                    generation: 2,
                    step: 7,
                    other_job: None,
                    rejected: vec![Rejected { path: &p, error: "bad".into() }],
                    notices: &warnings,
                }),
                json!({"event": "restore", "path": p, "generation": 2, "step": 7, "other_job": null,
                    "rejected": [{"path": p, "error": "bad"}], "notices": ["w"]}),
            ),
            (
                Event::Checkpoint {
                    trigger: vec!["signal"],
                    step: 1,
                    generation: 1,
                    path: &p,
                    bytes: 10,
                    raw_bytes: 20,
                    seconds: 0.5,
                    bandwidth_mbps: 2e-5,
                    time_left_s: None,
                    interval_s: Some(60.0),
                    exit: false,
                    warnings: &warnings,
                    level: "cache",
                },
                json!({"event": "checkpoint", "trigger": ["signal"], "step": 1, "generation": 1, "path": p,
                    "bytes": 10, "raw_bytes": 20, "seconds": 0.5, "bandwidth_MBps": 2e-5, "time_left_s": null,
                    "interval_s": 60.0, "exit": false, "warnings": ["w"], "level": "cache"}),
            ),
            (
                Event::StepCommitted { step: 4, generation: 2, seconds: 0.25 },
                json!({"event": "step-committed", "step": 4, "generation": 2, "seconds": 0.25}),
            ),
            (Event::Finish, json!({"event": "finish"})),
        ];
        for (event, old) in cases {
            assert_eq!(line(&event, 1.5, 3, "app"), line_of(old));
        }
        let interval = |i: Option<Interval>| serde_json::to_value(i.map(IntervalSetting)).unwrap();
        assert_eq!(interval(Some(Interval::Auto)), json!("auto"));
        assert_eq!(interval(None), json!(null));
        assert_eq!(interval(Some(Interval::Every(std::time::Duration::from_millis(1500)))), json!(1.5));
    }

    fn config_with(vars: &[(&str, &str)]) -> Config {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(Some("words"), |k| vars.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())).unwrap()
    }

    /// The interval in words names the setting it came from and, for Slurm's forms, which one was read.
    #[test]
    fn the_interval_in_words_names_its_setting() {
        let words = |vars: &[(&str, &str)]| config_with(vars).interval_in_words();
        assert_eq!(
            words(&[("CKPT_INTERVAL", "2")]),
            "checkpoint every 2 minutes (CKPT_INTERVAL=2, Slurm's format: minutes)"
        );
        assert_eq!(words(&[("CKPT_INTERVAL", "30s")]), "checkpoint every 30 seconds (CKPT_INTERVAL=30s)");
        assert_eq!(words(&[("CKPT_INTERVAL", "1h30m")]), "checkpoint every 1 hour 30 minutes (CKPT_INTERVAL=1h30m)");
        assert_eq!(
            words(&[("SLURM_CHECKPOINT", "1-02:03:04")]),
            "checkpoint every 1 day 2 hours 3 minutes 4 seconds (SLURM_CHECKPOINT=1-02:03:04, Slurm's format: \
             days-hours:minutes:seconds)"
        );
        assert_eq!(
            words(&[("SLURM_CHECKPOINT", "1:00"), ("CKPT_INTERVAL", "0:30")]),
            "checkpoint every 30 seconds (CKPT_INTERVAL=0:30, Slurm's format: minutes:seconds)"
        );
        assert_eq!(
            words(&[("SLURM_CHECKPOINT", "2-1")]),
            "checkpoint every 2 days 1 hour (SLURM_CHECKPOINT=2-1, Slurm's format: days-hours)"
        );
        assert_eq!(words(&[("CKPT_INTERVAL", "off")]), "no periodic checkpoints (CKPT_INTERVAL=off)");
        assert_eq!(words(&[]), "no periodic checkpoints (CKPT_INTERVAL and SLURM_CHECKPOINT are not set)");
        assert_eq!(
            words(&[("CKPT_INTERVAL", "auto"), ("CKPT_MTBF", "12h")]),
            "checkpoint interval from the measured cost and a mean time between failures of 12 hours \
             (Young/Daly; CKPT_INTERVAL=auto)"
        );
        // Set by the program: no variable to name, and a stale one is not named.
        let mut c = config_with(&[("CKPT_INTERVAL", "2")]);
        c.interval = Some(Interval::Every(Duration::from_millis(1500)));
        assert_eq!(c.interval_in_words(), "checkpoint every 1.5 seconds");
        c.interval = Some(Interval::Every(Duration::from_secs(1)));
        assert_eq!(c.interval_in_words(), "checkpoint every 1 second");
    }

    /// The log's start event carries the interval in words.
    #[test]
    fn the_start_event_says_the_interval_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("words.log");
        let mut config = config_with(&[("CKPT_INTERVAL", "2"), ("CKPT_SOCKET", "0")]);
        config.checkpoint_dir = dir.path().to_path_buf();
        config.restart_dir = dir.path().to_path_buf();
        config.log = crate::config::LogTarget::File(log.clone());
        config.signals.clear();
        drop(crate::Checkpointer::new(crate::Store::new(config)).unwrap());
        let text = std::fs::read_to_string(&log).unwrap();
        let start: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(start["event"], "start", "{text}");
        assert_eq!(start["interval"], json!(120.0), "{text}");
        assert_eq!(
            start["interval_description"], "checkpoint every 2 minutes (CKPT_INTERVAL=2, Slurm's format: minutes)",
            "{text}"
        );
    }
}
