//! Time settings with explicit units: `CKPT_INTERVAL=30s` is 30 seconds (a bare `2` stays Slurm's 2
//! minutes), `CKPT_MARGIN=2m` and `CKPT_MTBF=12h` likewise, while `SLURM_CHECKPOINT` keeps Slurm's forms
//! only; `ckpt env --json` shows the effective values.

use std::process::Command;

fn env_json(vars: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["env", "--json"]).env("CKPT_SOCKET", "0");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn ckpt_settings_take_units_slurm_checkpoint_does_not() {
    let secs = |vars: &[(&str, &str)], key: &str| env_json(vars).unwrap()[key].as_f64().unwrap();
    assert_eq!(secs(&[("CKPT_INTERVAL", "30s")], "interval_seconds"), 30.0);
    assert_eq!(secs(&[("CKPT_INTERVAL", "1h30m")], "interval_seconds"), 5400.0);
    assert_eq!(secs(&[("CKPT_INTERVAL", "2")], "interval_seconds"), 120.0);
    assert_eq!(secs(&[("SLURM_CHECKPOINT", "2")], "interval_seconds"), 120.0);
    assert_eq!(secs(&[("CKPT_MARGIN", "2m")], "margin_seconds"), 120.0);
    assert_eq!(secs(&[("CKPT_MARGIN", "45")], "margin_seconds"), 45.0);
    assert_eq!(secs(&[("CKPT_MTBF", "12h")], "mtbf_seconds"), 43_200.0);
    assert_eq!(env_json(&[("CKPT_INTERVAL", "auto")]).unwrap()["interval_seconds"], "auto");
    let e = env_json(&[("SLURM_CHECKPOINT", "30s")]).unwrap_err();
    assert!(e.contains("SLURM_CHECKPOINT") && e.contains("\"30s\""), "{e}");
    let e = env_json(&[("CKPT_INTERVAL", "30x")]).unwrap_err();
    assert!(e.contains("CKPT_INTERVAL") && e.contains("unknown unit"), "{e}");
}

/// The effective interval in words, naming the setting: `ckpt env` (JSON and text) and `ckpt job`'s
/// start line say it, so a user who wrote `CKPT_INTERVAL=2` meaning seconds sees "2 minutes".
#[test]
fn the_interval_is_said_in_words() {
    let words = |vars: &[(&str, &str)]| env_json(vars).unwrap()["interval_description"].as_str().unwrap().to_string();
    assert_eq!(
        words(&[("CKPT_INTERVAL", "2")]),
        "checkpoint every 2 minutes (CKPT_INTERVAL=2, Slurm's format: minutes)"
    );
    assert_eq!(words(&[("CKPT_INTERVAL", "30s")]), "checkpoint every 30 seconds (CKPT_INTERVAL=30s)");
    assert_eq!(
        words(&[("SLURM_CHECKPOINT", "1:30")]),
        "checkpoint every 1 minute 30 seconds (SLURM_CHECKPOINT=1:30, Slurm's format: minutes:seconds)"
    );
    assert_eq!(words(&[]), "no periodic checkpoints (CKPT_INTERVAL and SLURM_CHECKPOINT are not set)");

    let clean = |cmd: &mut Command| {
        for (k, _) in std::env::vars() {
            if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CKPT_SOCKET", "0").env("CKPT_INTERVAL", "2");
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
    clean(&mut cmd);
    let o = cmd.arg("env").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().any(|l| l.starts_with("interval_description")
            && l.ends_with("checkpoint every 2 minutes (CKPT_INTERVAL=2, Slurm's format: minutes)")),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
    clean(&mut cmd);
    let o = cmd.current_dir(dir.path()).args(["job", "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("ckpt job: started true (pid ")
            && l.ends_with("; checkpoint every 2 minutes (CKPT_INTERVAL=2, Slurm's format: minutes)")),
        "{err}"
    );
}
