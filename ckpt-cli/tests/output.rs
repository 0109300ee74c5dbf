//! What the command prints: dates in `inspect` (ISO 8601 UTC and the age; JSON keeps the number and adds
//! the string), a generation and its hard-linked newest name listed once, `env --name`, `verify --json`,
//! and shell completions and manual pages that cover every subcommand.

use std::path::Path;
use std::process::{Command, Output};

use ckpt_core::{Config, Store};
use serde_json::Value;

/// Every subcommand `ckpt --help` lists (checked against it below).
const SUBCOMMANDS: &[&str] =
    &["inspect", "verify", "list", "flush", "env", "create", "requeue", "restart", "run", "job", "completions", "man"];

fn ckpt(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ckpt"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CKPT_") || k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir).env("CKPT_DIR", dir).env("CKPT_SOCKET", "0").env("CKPT_LOG", "off").args(args);
    cmd.output().expect("run ckpt")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn two_generations(dir: &Path) {
    let store = Store::new(Config::new("app", dir).unwrap());
    for step in 1..=2 {
        let mut w = store.begin(step * 10).unwrap();
        w.add_bytes("field", &[step as u8; 1000]).unwrap();
        w.commit().unwrap();
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_iso_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn inspect_prints_dates_and_ages() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    let file = dir.path().join("app.ckpt");
    let out = ok(&ckpt(dir.path(), &["inspect", file.to_str().unwrap()]));
    let written = out.lines().find(|l| l.starts_with("written")).expect("a written line");
    assert!(!written.contains("ns since"), "{out}");
    let date = written.split_whitespace().nth(1).unwrap();
    assert!(is_iso_utc(date), "{written}");
    assert!(written.contains("(less than a minute ago)"), "{written}");

    let v: Value =
        serde_json::from_str(&ok(&ckpt(dir.path(), &["inspect", "--json", file.to_str().unwrap()]))).unwrap();
    let ns = v["created_unix_ns"].as_i64().expect("the number stays");
    assert!(ns > 1_600_000_000_000_000_000, "{v}");
    assert_eq!(v["created"].as_str().unwrap(), date, "{v}");
}

#[test]
fn list_shows_the_newest_generation_once_under_both_names() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    let out = ok(&ckpt(dir.path(), &["list", dir.path().to_str().unwrap()]));
    let valid: Vec<&str> = out.lines().filter(|l| l.trim_start().starts_with("valid")).collect();
    assert_eq!(valid.len(), 2, "{out}");
    let newest = valid.iter().find(|l| l.contains("app.ckpt.2")).expect("generation 2");
    assert!(newest.contains("(also app.ckpt, the newest)"), "{out}");
    assert!(valid.iter().any(|l| l.contains("app.ckpt.1 ") && !l.contains("also")), "{out}");
    assert!(newest.split_whitespace().any(is_iso_utc), "{out}");

    let v: Value =
        serde_json::from_str(&ok(&ckpt(dir.path(), &["list", "--json", dir.path().to_str().unwrap()]))).unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{v}");
    let g2 = files.iter().find(|f| f["path"].as_str().unwrap().ends_with("app.ckpt.2")).unwrap();
    assert_eq!(g2["also"], serde_json::json!([dir.path().join("app.ckpt")]), "{v}");
    assert!(is_iso_utc(g2["created"].as_str().unwrap()), "{v}");
    assert!(v["restart"][0]["chosen"].as_str().unwrap().ends_with("app.ckpt"), "{v}");
}

#[test]
fn env_uses_the_name_the_program_passes() {
    let dir = tempfile::tempdir().unwrap();
    let v: Value = serde_json::from_str(&ok(&ckpt(dir.path(), &["env", "--json", "--name", "heat"]))).unwrap();
    assert_eq!(v["app_name"], "heat");
    assert_eq!(v["checkpoint_name"], "heat.ckpt");
    let out = ok(&ckpt(dir.path(), &["env", "--name", "heat"]));
    assert!(out.lines().any(|l| l.starts_with("checkpoint_name") && l.ends_with(" heat.ckpt")), "{out}");
    // Without --name (and outside a job) the command says the name is a guess.
    let o = ckpt(dir.path(), &["env"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--name"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn verify_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    two_generations(dir.path());
    let v: Value =
        serde_json::from_str(&ok(&ckpt(dir.path(), &["verify", "--json", dir.path().to_str().unwrap()]))).unwrap();
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["files"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["files"].as_array().unwrap().iter().all(|f| f["ok"] == true && f["step"].is_i64()), "{v}");

    let g1 = dir.path().join("app.ckpt.1");
    let mut bytes = std::fs::read(&g1).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 100);
    std::fs::write(&g1, &bytes).unwrap();
    let o = ckpt(dir.path(), &["verify", "--json", g1.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failed"], 1, "{v}");
    assert_eq!(v["files"][0]["ok"], false, "{v}");
    assert!(v["files"][0]["error"].as_str().unwrap().contains("app.ckpt.1"), "{v}");
}

#[test]
fn the_subcommand_list_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(&ckpt(dir.path(), &["--help"]));
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert_eq!(listed, SUBCOMMANDS, "{help}");
}

#[test]
fn completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(&ckpt(dir.path(), &["completions", shell]));
        assert!(out.len() > 1000, "{shell}: {out}");
        for sub in SUBCOMMANDS {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
        // Options of subcommands too.
        assert!(out.contains("max-restarts") && out.contains("image-dir"), "{shell}");
    }
    assert!(ok(&ckpt(dir.path(), &["completions", "bash"])).contains("complete -F"));
    assert!(!ckpt(dir.path(), &["completions", "tcsh"]).status.success());
}

#[test]
fn man_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let page = ok(&ckpt(dir.path(), &["man"]));
    assert!(page.contains(".TH ckpt 1"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(&format!("ckpt\\-{sub}(1)")), "ckpt(1) lacks {sub}: {page}");
    }
    let out = dir.path().join("man1");
    ok(&ckpt(dir.path(), &["man", "--dir", out.to_str().unwrap()]));
    assert!(std::fs::read_to_string(out.join("ckpt.1")).unwrap().contains(".SH SUBCOMMANDS"));
    for sub in SUBCOMMANDS {
        let p = std::fs::read_to_string(out.join(format!("ckpt-{sub}.1"))).unwrap();
        assert!(p.contains(".SH SYNOPSIS") && p.contains(&format!("ckpt\\-{sub}")), "ckpt-{sub}.1: {p}");
    }
    let requeue = std::fs::read_to_string(out.join("ckpt-requeue.1")).unwrap();
    assert!(requeue.contains("max\\-restarts"), "{requeue}");
}

#[test]
fn install_script_installs_the_command_completions_and_man_pages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The library part is not what this test is about: stand-ins keep it from building in release mode.
    let libs = tmp.path().join("libs");
    std::fs::create_dir(&libs).unwrap();
    std::fs::write(libs.join("libckpt.so"), b"").unwrap();
    std::fs::write(libs.join("libckpt.a"), b"").unwrap();
    let prefix = tmp.path().join("prefix");
    let o = Command::new("bash")
        .arg(root.join("ckpt-ffi/install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--lib-from")
        .arg(&libs)
        .arg("--no-fortran")
        .arg("--cli-from")
        .arg(env!("CARGO_BIN_EXE_ckpt"))
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(out.contains("command: PATH="), "{out}");
    assert!(prefix.join("bin/ckpt").is_file());
    let share = prefix.join("share");
    for (shell, file) in [
        ("bash", "bash-completion/completions/ckpt"),
        ("zsh", "zsh/site-functions/_ckpt"),
        ("fish", "fish/vendor_completions.d/ckpt.fish"),
    ] {
        let text = std::fs::read_to_string(share.join(file)).unwrap();
        assert_eq!(text, ok(&ckpt(tmp.path(), &["completions", shell])), "{file}");
    }
    for sub in SUBCOMMANDS {
        assert!(share.join(format!("man/man1/ckpt-{sub}.1")).is_file(), "ckpt-{sub}.1");
    }
    assert!(std::fs::read_to_string(share.join("man/man1/ckpt.1")).unwrap().contains(".SH SUBCOMMANDS"));
    // bash loads the completion: `ckpt re<TAB>` offers requeue and restart.
    let script = format!(
        "source {}; COMP_WORDS=(ckpt re); COMP_CWORD=1; COMP_LINE='ckpt re'; COMP_POINT=7; _ckpt ckpt re ckpt; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        share.join("bash-completion/completions/ckpt").display()
    );
    let o = Command::new("bash").arg("-c").arg(script).output().unwrap();
    let words = ok(&o);
    assert!(words.lines().any(|w| w == "requeue") && words.lines().any(|w| w == "restart"), "{words}");
    assert!(!words.lines().any(|w| w == "inspect"), "{words}");
}
