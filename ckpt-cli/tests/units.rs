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
