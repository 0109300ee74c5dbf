//! Whose checkpoint is it: the run identity recorded in every file, and the rules restart applies to it.
//!
//! Every file a [`crate::Store`] writes carries the metadata entry [`IDENTITY_KEY`], a JSON object:
//!
//! ```json
//! {"v":1,"uid":1000,"app":"train","job":"4242","array_job":"4240","array_task":"2",
//!  "cmdline":"python3 train.py --lr 0.1","cmdline_hash":"9f2c…","cwd":"/scratch/alice/sweep"}
//! ```
//!
//! `job`, `array_job` and `array_task` are absent outside Slurm (and outside a job array). `cmdline` is for
//! people (cut to 512 bytes); `cmdline_hash` (FNV-1a, 64 bits, over the NUL-separated arguments) is what
//! is compared. Files written before the key existed have none and stay readable.
//!
//! Restart resumes, by default:
//!
//! 1. **Its own checkpoints**: the files named after this job id (`<job_id>.ckpt`, the same after `scontrol
//!    requeue`). A file under that name whose identity says another user, another application, or another
//!    array job or task belongs to another run (a job id reused after a controller reset, a copy) and is
//!    refused loudly. Outside Slurm the name is the application name, which every run in a directory with
//!    the same name shares (a parameter sweep run one point after the other, say): there the file must
//!    also have been written by the same command line in the same working directory, or restart refuses
//!    loudly, names both command lines and says how to resume it anyway (`CKPT_RESUME_FROM=<name>`).
//!    A save checks the same before it writes under a name that holds another run's files, so that its
//!    retention never removes them.
//! 2. **Another job's checkpoints**, only when this run has none and the identity matches fully: same user,
//!    application name, command line, working directory and array task index (a resubmitted job). The
//!    choice is announced on stderr and in the log, naming the job taken. Candidates that match only in
//!    part (a parameter sweep, the other tasks of a job array) are never taken, and are listed on stderr.
//!
//! `CKPT_RESUME_FROM=<job id>` resumes that job's checkpoint explicitly (the files must still be this
//! user's; naming this run's own job or name, a first run with no files starts fresh, another job's
//! missing files are an error); `CKPT_RESUME_FROM=any` takes the newest checkpoint of this application and user in the restart
//! directory, whichever run wrote it (what `ckpt restart --image-dir` sets); `CKPT_RESUME_FROM=none`
//! forbids taking another job's checkpoint.

use serde::{Deserialize, Serialize};

use crate::format::Header;

/// The metadata key holding a file's [`RunIdentity`].
pub const IDENTITY_KEY: &str = "ckpt.identity";
/// Longest command line recorded for display (the hash covers all of it).
const CMDLINE_DISPLAY_MAX: usize = 512;

/// Who wrote a checkpoint, as far as restart needs to know (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Version of this record.
    pub v: u32,
    /// Effective user id of the writer.
    pub uid: u32,
    /// Application name.
    pub app: String,
    /// Slurm job id (`SLURM_JOB_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Slurm array job id (`SLURM_ARRAY_JOB_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_job: Option<String>,
    /// Slurm array task index (`SLURM_ARRAY_TASK_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_task: Option<String>,
    /// The command line, for people (arguments joined by spaces, cut to 512 bytes).
    pub cmdline: String,
    /// FNV-1a 64 of the command line's NUL-separated arguments, in hex: what restart compares.
    pub cmdline_hash: String,
    /// Working directory of the writer.
    pub cwd: String,
}

/// How restart may take another job's checkpoint (`CKPT_RESUME_FROM`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ResumeFrom {
    /// This run's own checkpoints; another job's only when the identity matches fully (the default).
    #[default]
    Auto,
    /// This run's own checkpoints only (`CKPT_RESUME_FROM=none`).
    OwnOnly,
    /// The checkpoints of this job id (or, outside Slurm, this application name), whoever's run wrote them
    /// as long as the files are this user's (`CKPT_RESUME_FROM=<job id>`).
    Job(String),
    /// The newest checkpoint of this application in the restart directory, this user's, whichever run
    /// wrote it (`CKPT_RESUME_FROM=any`; what `ckpt restart --image-dir DIR -- PROGRAM` asks for, as
    /// `scontrol checkpoint restart ... ImageDir=` of Slurm's removed checkpoint interface did). Announced like any other adoption.
    Any,
}

impl ResumeFrom {
    /// Parses `CKPT_RESUME_FROM`: `none`, `auto`, or a job id.
    pub fn parse(text: &str) -> Option<ResumeFrom> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("off") {
            Some(ResumeFrom::OwnOnly)
        } else if t.eq_ignore_ascii_case("auto") || t.is_empty() {
            Some(ResumeFrom::Auto)
        } else if t.eq_ignore_ascii_case("any") {
            Some(ResumeFrom::Any)
        } else if t.contains('/') || t.contains('\0') || t == "." || t == ".." || t.len() > crate::format::MAX_NAME_LEN
        {
            None
        } else {
            Some(ResumeFrom::Job(t.to_string()))
        }
    }
}

impl RunIdentity {
    /// This process's identity for `app`, with the Slurm ids from `lookup`.
    pub fn of_process(app: &str, lookup: &dyn Fn(&str) -> Option<String>) -> RunIdentity {
        let args = process_cmdline();
        RunIdentity::new(app, lookup, &args, &current_dir())
    }

    /// An identity from explicit parts (tests, tools).
    pub fn new(app: &str, lookup: &dyn Fn(&str) -> Option<String>, args: &[Vec<u8>], cwd: &str) -> RunIdentity {
        let get = |k: &str| lookup(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let mut display = args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>().join(" ");
        if display.len() > CMDLINE_DISPLAY_MAX {
            let mut cut = CMDLINE_DISPLAY_MAX;
            while !display.is_char_boundary(cut) {
                cut -= 1;
            }
            display.truncate(cut);
            display.push('…');
        }
        RunIdentity {
            v: 1,
            uid: effective_uid(),
            app: app.to_string(),
            job: get("SLURM_JOB_ID"),
            array_job: get("SLURM_ARRAY_JOB_ID"),
            array_task: get("SLURM_ARRAY_TASK_ID"),
            cmdline: display,
            cmdline_hash: format!("{:016x}", fnv1a(args)),
            cwd: cwd.to_string(),
        }
    }

    /// The identity recorded in a file's header: `None` when it has none (written before identities were
    /// recorded), `Some(Err)` when the entry is there but unreadable.
    pub fn of_header(header: &Header) -> Option<Result<RunIdentity, String>> {
        let (_, value) = header.metadata.iter().find(|(k, _)| k == IDENTITY_KEY)?;
        Some(
            serde_json::from_slice(value)
                .map_err(|e| format!("its identity record ({IDENTITY_KEY}) is unreadable: {e}")),
        )
    }

    /// The metadata value recorded in files.
    pub fn to_metadata(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether a file recorded under this run's own name was written by another run: the reasons, empty
    /// when it is this run's. `strict` also compares the command line and directory.
    pub fn own_name_conflicts(&self, file: &RunIdentity, strict: bool) -> Vec<String> {
        let mut why = Vec::new();
        if file.uid != self.uid {
            why.push(format!("it was written by uid {}, this run is uid {}", file.uid, self.uid));
        }
        if file.app != self.app {
            why.push(format!("it belongs to application {:?}, this run is {:?}", file.app, self.app));
        }
        if let (Some(a), Some(b)) = (&file.array_job, &self.array_job)
            && a != b
        {
            why.push(format!("it belongs to array job {a}, this run to array job {b}"));
        }
        if file.array_task != self.array_task {
            why.push(format!(
                "it belongs to array task {}, this run is array task {}",
                file.array_task.as_deref().unwrap_or("(none)"),
                self.array_task.as_deref().unwrap_or("(none)")
            ));
        }
        if strict {
            self.compare_command(file, &mut why);
        }
        why
    }

    /// Why a file may not be taken even when any run's checkpoint is asked for ([`ResumeFrom::Any`]):
    /// another user or another application.
    pub fn owner_mismatches(&self, file: &RunIdentity) -> Vec<String> {
        let mut why = Vec::new();
        if file.uid != self.uid {
            why.push(format!("another user (uid {})", file.uid));
        }
        if file.app != self.app {
            why.push(format!("another application ({:?})", file.app));
        }
        why
    }

    /// Why a file of another job may not be adopted: empty when the identity matches fully (same user,
    /// application, command line, working directory and array task index).
    pub fn adoption_mismatches(&self, file: &RunIdentity) -> Vec<String> {
        let mut why = self.owner_mismatches(file);
        if file.array_task != self.array_task {
            why.push(format!("another array task ({})", file.array_task.as_deref().unwrap_or("none")));
        }
        self.compare_command(file, &mut why);
        why
    }

    fn compare_command(&self, file: &RunIdentity, why: &mut Vec<String>) {
        if file.cmdline_hash != self.cmdline_hash {
            why.push(format!("another command line ({:?}, this run: {:?})", file.cmdline, self.cmdline));
        }
        if file.cwd != self.cwd {
            why.push(format!("another working directory ({}, this run: {})", file.cwd, self.cwd));
        }
    }
}

/// The effective user id.
pub fn effective_uid() -> u32 {
    if cfg!(miri) {
        return 1000;
    }
    crate::sys::euid()
}

fn process_cmdline() -> Vec<Vec<u8>> {
    match std::fs::read("/proc/self/cmdline") {
        Ok(bytes) => bytes.split(|&b| b == 0).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect(),
        Err(_) => std::env::args_os().map(std::ffi::OsString::into_encoded_bytes).collect(),
    }
}

fn current_dir() -> String {
    std::env::current_dir().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default()
}

fn fnv1a(args: &[Vec<u8>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for a in args {
        for &b in a.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(vars: &[(&str, &str)], args: &[&str], cwd: &str) -> RunIdentity {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        RunIdentity::new("train", &lookup, &args, cwd)
    }

    #[test]
    fn round_trip_and_comparisons() {
        let a =
            id(&[("SLURM_JOB_ID", "7"), ("SLURM_ARRAY_JOB_ID", "5"), ("SLURM_ARRAY_TASK_ID", "1")], &["p", "x"], "/d");
        let back: RunIdentity = serde_json::from_slice(&a.to_metadata()).unwrap();
        assert_eq!(back, a);
        // Another task of the same array: never adopted, and a conflict under the own name.
        let b =
            id(&[("SLURM_JOB_ID", "8"), ("SLURM_ARRAY_JOB_ID", "5"), ("SLURM_ARRAY_TASK_ID", "2")], &["p", "x"], "/d");
        assert!(!a.adoption_mismatches(&b).is_empty());
        assert!(!a.own_name_conflicts(&b, false).is_empty());
        // A resubmission of the same task: adopted.
        let c =
            id(&[("SLURM_JOB_ID", "9"), ("SLURM_ARRAY_JOB_ID", "9"), ("SLURM_ARRAY_TASK_ID", "1")], &["p", "x"], "/d");
        assert!(a.adoption_mismatches(&c).is_empty());
        // Arguments are compared as a list: "a b" is not "a" "b".
        assert_ne!(id(&[], &["p", "a b"], "/d").cmdline_hash, id(&[], &["p", "a", "b"], "/d").cmdline_hash);
        assert_eq!(
            id(&[], &["p", "--lr", "0.1"], "/d").adoption_mismatches(&id(&[], &["p", "--lr", "0.2"], "/d")).len(),
            1
        );
        assert_eq!(id(&[], &["p"], "/d").adoption_mismatches(&id(&[], &["p"], "/e")).len(), 1);
        // Outside Slurm the own name is strict about the command line.
        assert!(id(&[], &["p", "1"], "/d").own_name_conflicts(&id(&[], &["p", "2"], "/d"), false).is_empty());
        assert!(!id(&[], &["p", "1"], "/d").own_name_conflicts(&id(&[], &["p", "2"], "/d"), true).is_empty());
    }

    #[test]
    fn resume_from_values() {
        assert_eq!(ResumeFrom::parse("none"), Some(ResumeFrom::OwnOnly));
        assert_eq!(ResumeFrom::parse("AUTO"), Some(ResumeFrom::Auto));
        assert_eq!(ResumeFrom::parse("1234"), Some(ResumeFrom::Job("1234".into())));
        assert_eq!(ResumeFrom::parse("any"), Some(ResumeFrom::Any));
        assert_eq!(ResumeFrom::parse("a/b"), None);
    }

    #[test]
    fn long_command_lines_are_cut_for_display_only() {
        let long = "é".repeat(600);
        let a = id(&[], &["p", &long], "/d");
        assert!(a.cmdline.len() <= CMDLINE_DISPLAY_MAX + 3);
        assert_ne!(a.cmdline_hash, id(&[], &["p", &long[..long.len() - 2]], "/d").cmdline_hash);
    }
}
