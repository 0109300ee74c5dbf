//! Checkpointing from async code (tokio).
//!
//! ckpt does blocking file-system work and needs no runtime: from async code, run every call that touches
//! files on the runtime's blocking pool with `tokio::task::spawn_blocking` (or `block_in_place` on the
//! multi-threaded runtime), never on a worker thread, where it would stall every task of that worker.
//!
//! ```text
//! cargo run -p ckpt-core --example tokio
//! ```
//!
//! How long each call blocks (the crate documentation, "Async runtimes", has the whole table):
//!
//! - `should_checkpoint`, `should_exit`, `request_checkpoint`: never (one atomic operation): call them from
//!   async code directly.
//! - `restore`: opening and verifying the candidates; it reads every byte of the file it chooses.
//! - `checkpoint` (begin, write, commit): a directory listing (at most every 10 s) and the creation of a
//!   file, writing the sections, then `fsync` of the file, a link, a rename and `fsync` of the directory.
//! - `commit_step` (rank 0 of a multi-rank job): polls for the other ranks' parts, up to `commit_timeout`
//!   (600 s by default), then writes the manifest as `checkpoint` writes a file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt_core::{Checkpointer, Config, Store};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Progress {
    step: u64,
    residual: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;

    // One process: a checkpointer shared with the blocking pool (it is Send + Sync).
    let cp = Arc::new(Checkpointer::new(Store::new(Config::builder("async", dir.path()).build()?))?);
    let restored = tokio::task::spawn_blocking({
        let cp = cp.clone();
        move || cp.restore()
    })
    .await??;
    let (mut progress, mut field) = match restored {
        Some(r) => {
            (r.checkpoint.read_serde::<Progress>("progress")?, r.checkpoint.read_slice::<f64>("field")?.into_owned())
        }
        None => (Progress { step: 0, residual: 1.0 }, vec![0.0f64; 1 << 16]),
    };
    while progress.step < 3 {
        // The async work of one step.
        for x in &mut field {
            *x += 1.0;
        }
        progress.step += 1;
        progress.residual /= 10.0;
        tokio::task::yield_now().await;
        cp.request_checkpoint(false); // what SIGUSR1 does; signals, intervals and the time limit do the same
        if cp.should_checkpoint() {
            // A copy of the state taken at this safe point goes to the blocking pool; the task waits for the
            // save to be durable (or, to overlap it with the next steps, keeps the JoinHandle and awaits it
            // before the next save).
            let (cp, snapshot, values) = (cp.clone(), progress.clone(), field.clone());
            let started = Instant::now();
            let info = tokio::task::spawn_blocking(move || {
                cp.checkpoint(snapshot.step, |w| {
                    w.add_serde("progress", &snapshot)?;
                    w.add_slice("field", &values)
                })
            })
            .await??;
            println!(
                "step {} durable after {:.1} ms (the blocking thread waited for the write, the fsyncs and the rename): {}",
                info.app_step,
                started.elapsed().as_secs_f64() * 1e3,
                info.path.display()
            );
        }
        if cp.should_exit() {
            return Ok(()); // SIGTERM or the time limit: the checkpoint is durable
        }
    }

    // Two ranks of a multi-rank job (in one process here; with MPI each rank is its own process): every rank
    // writes its part of the agreed generation, and rank 0 commits the step once every part is durable.
    let ranks: Vec<Arc<Store>> = (0..2)
        .map(|r| {
            let config = Config::builder("async-mpi", dir.path()).rank(r, 2).commit_timeout(Duration::from_secs(30));
            Ok(Arc::new(Store::new(config.build()?)))
        })
        .collect::<ckpt_core::Result<_>>()?;
    let generation = ranks[0].next_generation()?; // with MPI: the maximum over the ranks (a max-reduction)
    let step = progress.step;
    let first = tokio::task::spawn_blocking({
        let store = ranks[0].clone();
        move || -> ckpt_core::Result<(Duration, ckpt_core::CommitInfo)> {
            let mut w = store.begin_part(generation, step)?;
            w.add_slice("x", &[0.0f64; 8])?;
            w.commit()?;
            // Blocks until rank 1's part is durable (polling), at most `commit_timeout`.
            let started = Instant::now();
            let info = store.commit_step(generation, step)?;
            Ok((started.elapsed(), info))
        }
    });
    let second = tokio::task::spawn_blocking({
        let store = ranks[1].clone();
        move || -> ckpt_core::Result<()> {
            std::thread::sleep(Duration::from_millis(200)); // a slower rank
            let mut w = store.begin_part(generation, step)?;
            w.add_slice("x", &[1.0f64; 8])?;
            w.commit().map(|_| ())
        }
    });
    second.await??;
    let (waited, info) = first.await??;
    println!(
        "step {step} of 2 ranks committed as generation {} after rank 0 waited {:.0} ms in commit_step for rank 1",
        info.generation,
        waited.as_secs_f64() * 1e3
    );
    let restored = tokio::task::spawn_blocking({
        let store = ranks[1].clone();
        move || store.restore()
    })
    .await??
    .ok_or("the step restores")?;
    assert_eq!(&restored.checkpoint.read_slice::<f64>("x")?[..], &[1.0; 8], "rank 1 restores its own part");
    Ok(())
}
