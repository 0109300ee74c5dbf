//! The events of the structured log, one JSON object a line (`"event"` names the kind).
//!
//! The checkpointer adds `ts`, `rank` and `checkpoint` to every line ([`line`]). The keys come out in
//! alphabetical order, as they always have (the lines go through `serde_json::Value`): programs and
//! tests parse these lines, and some compare them as text.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::config::Interval;

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
    StepCommitted { step: u64, generation: u64 },
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
                Event::StepCommitted { step: 4, generation: 2 },
                json!({"event": "step-committed", "step": 4, "generation": 2}),
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
}
