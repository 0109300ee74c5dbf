//! A 2-D heat-diffusion (Jacobi) solver that checkpoints with ckpt.
//!
//! * SIGUSR1: checkpoint at the next iteration and continue.
//! * SIGTERM: checkpoint at the next iteration and exit with status 0 (the job can be requeued).
//! * `SLURM_CHECKPOINT` / `CKPT_INTERVAL`: periodic checkpoints; the job's time limit
//!   (`SLURM_JOB_END_TIME`, squeue, `CKPT_END_TIME`): a final checkpoint before it, then exit.
//!
//! On start it restores the newest valid checkpoint, if any, and continues from there; the final field is
//! bit-for-bit the one of an uninterrupted run. Usage: `heat [N] [ITERATIONS]` (default 1024 x 1024, 2000).

use std::process::ExitCode;

use ckpt_core::{Checkpointer, Compression, SectionOptions};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Progress {
    iteration: u64,
    n: usize,
}

fn to_bytes(field: &[f64]) -> Vec<u8> {
    field.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8]) -> Vec<f64> {
    bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

fn initial(n: usize) -> Vec<f64> {
    let mut u = vec![0.0; n * n];
    u[..n].fill(100.0); // hot top edge
    u
}

fn step(u: &[f64], next: &mut [f64], n: usize) {
    next.copy_from_slice(u);
    for i in 1..n - 1 {
        for j in 1..n - 1 {
            next[i * n + j] = 0.25 * (u[(i - 1) * n + j] + u[(i + 1) * n + j] + u[i * n + j - 1] + u[i * n + j + 1]);
        }
    }
}

fn run() -> ckpt_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let iterations: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let cp = Checkpointer::from_env(Some("heat"))?;

    let (mut u, start) = match cp.restore()? {
        Some(r) => {
            let progress: Progress = r.checkpoint.read_serde("progress")?;
            if progress.n != n {
                return Err(ckpt_core::Error::invalid(format!("checkpoint is for N={}, not {n}", progress.n)));
            }
            let field = from_bytes(&r.checkpoint.read("field")?);
            println!("resumed from {} at iteration {}", r.chosen_path.display(), progress.iteration);
            (field, progress.iteration)
        }
        None => {
            println!("starting fresh: {n} x {n}, {iterations} iterations");
            (initial(n), 0)
        }
    };
    let mut next = vec![0.0; n * n];
    for it in start..iterations {
        step(&u, &mut next, n);
        std::mem::swap(&mut u, &mut next);
        let done = it + 1;
        if cp.should_checkpoint() {
            let mut w = cp.begin(done)?;
            w.add_serde("progress", &Progress { iteration: done, n })?;
            w.add_section_with("field", &to_bytes(&u), SectionOptions::new().compression(Compression::None))?;
            let info = cp.commit(w)?;
            println!("checkpoint at iteration {done}: {} ({} bytes)", info.path.display(), info.stats.file_bytes);
        }
        if cp.should_exit() {
            println!("exiting after the checkpoint at iteration {done}; restart to continue");
            return Ok(());
        }
    }
    let sum: f64 = u.iter().sum();
    let crc = crc32(&to_bytes(&u));
    println!("done: {iterations} iterations, sum = {sum:.12e}, field crc32 = {crc:08x}");
    Ok(())
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heat: {e}");
            ExitCode::FAILURE
        }
    }
}
