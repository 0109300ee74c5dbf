//! Child program for the trigger and `ckpt create` tests.
//!
//! `ckpt-test-trigger ITERATIONS SLEEP_MS [MODE]` runs ITERATIONS steps of SLEEP_MS each, polling
//! `should_checkpoint()` / `should_exit()` after every step, with the configuration from the environment.
//! It prints one line per event on stdout: `ready <pid>`, `resumed <step>`, `checkpoint <step> <path>`,
//! `exit <step>`, `done <step>`, and for MODE `chain` also `user-handler` whenever its own SIGUSR1
//! handler (installed before ckpt's) runs. MODE `stall` never reaches a safe point (sleeps forever).
//! `CKPT_TEST_PAD_MIB=N` adds a raw section of N MiB to every checkpoint.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ckpt_core::Checkpointer;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct State {
    step: u64,
    history: Vec<u64>,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let sleep = Duration::from_millis(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10));
    let mode = args.get(3).cloned().unwrap_or_default();
    let user_flag = Arc::new(AtomicBool::new(false));
    if mode == "chain" {
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, user_flag.clone()).expect("user handler");
    }
    // CKPT_TEST_PAD_MIB: a raw section of that many MiB in every checkpoint (copies that take a while).
    let pad_mib: usize = std::env::var("CKPT_TEST_PAD_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let pad: Vec<u8> = (0..pad_mib << 20).map(|i| (i % 251) as u8).collect();
    let cp = match Checkpointer::from_env(Some("trigger-test")) {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("ckpt-test-trigger: {e}");
            std::process::exit(2);
        }
    };
    let mut state = match cp.restore() {
        Ok(Some(r)) => {
            let s: State = r.checkpoint.read_serde("state").expect("state section");
            say(&format!("resumed {}", s.step));
            s
        }
        Ok(None) => State { step: 0, history: Vec::new() },
        Err(e) => {
            eprintln!("ckpt-test-trigger: {e}");
            std::process::exit(3);
        }
    };
    say(&format!("ready {}", std::process::id()));
    if mode == "drop" {
        // After the checkpointer is gone, the signals must have their default effect again.
        drop(cp);
        say("dropped");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if mode == "stall" {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    while state.step < iterations {
        std::thread::sleep(sleep);
        state.step += 1;
        state.history.push(state.step * state.step);
        if user_flag.swap(false, Ordering::SeqCst) {
            say("user-handler");
        }
        if cp.should_checkpoint() {
            let saved = cp.checkpoint(state.step, |w| {
                w.add_serde("state", &state)?;
                if !pad.is_empty() {
                    w.add_bytes("pad", &pad)?;
                }
                Ok(())
            });
            match saved {
                Ok(info) => say(&format!("checkpoint {} {}", state.step, info.path.display())),
                Err(e) => say(&format!("checkpoint-failed {} {e}", state.step)),
            }
        }
        if cp.should_exit() {
            say(&format!("exit {}", state.step));
            return;
        }
    }
    let sum: u64 = state.history.iter().sum();
    say(&format!("done {} {sum}", state.step));
}
