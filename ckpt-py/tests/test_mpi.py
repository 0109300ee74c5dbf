"""Checkpointer(comm=MPI.COMM_WORLD): 4 ranks under Open MPI's mpirun with mpi4py (tests/mpi_train.py).

Every rank restarts from the same step (the newest every rank can read: a damaged part on one rank sends
all ranks back together), a signal to one rank makes all ranks checkpoint the same step and leave, a job
killed (SIGKILL on one rank) resumes from its last committed step, and the results are identical to an
uninterrupted run's.

Needs mpirun (Open MPI) and mpi4py in the test's Python: skipped with a message when either is missing,
except under CI=true, where it must run (run-tests.sh installs mpi4py; .ci/run installs Open MPI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCRIPT = HERE / "mpi_train.py"
NP = 4
STEPS = 20


def _mpirun() -> str | None:
    # Open MPI's own launcher when several MPI implementations are installed (mpirun may be MPICH's).
    for name in ("mpirun.openmpi", "mpirun"):
        path = shutil.which(name)
        if path is None:
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        if "Open MPI" in out.stdout + out.stderr:
            return path
    return None


def _missing() -> str | None:
    if _mpirun() is None:
        return "no Open MPI mpirun on PATH (apt-get install openmpi-bin libopenmpi-dev)"
    r = subprocess.run([sys.executable, "-c", "import mpi4py"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"mpi4py is not installed in {sys.executable} (pip install mpi4py)"
    return None


@pytest.fixture(scope="module")
def mpirun() -> str:
    why = _missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the MPI tests: {why}")
        pytest.skip(f"MPI tests skipped: {why}")
    path = _mpirun()
    assert path is not None
    return path


class Job:
    """One checkpoint directory and the runs of mpi_train.py over it."""

    def __init__(self, mpirun: str, root: Path) -> None:
        self.mpirun = mpirun
        self.dir = root / "ckpt"
        self.out = root / "out"
        self.dir.mkdir(parents=True)
        self.out.mkdir()

    def run(self, *, expect_ok: bool = True, **env_extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CKPT_", "TRAIN_", "OMPI_", "PMIX_"))}
        env.update(
            CKPT_DIR=str(self.dir),
            # root in containers; shared memory without ptrace (no CMA) in containers
            OMPI_ALLOW_RUN_AS_ROOT="1",
            OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
            OMPI_MCA_btl_vader_single_copy_mechanism="none",
            OMPI_MCA_rmaps_base_oversubscribe="1",
            # mpi4py's binary wheel carries extensions for Open MPI's and MPICH's ABI: use Open MPI's
            MPI4PY_MPIABI="openmpi",
            **env_extra,
        )
        for f in self.out.iterdir():
            f.unlink()
        r = subprocess.run(
            [self.mpirun, "--oversubscribe", "-np", str(NP), sys.executable, str(SCRIPT), str(self.out), str(STEPS)],
            env=env,
            cwd=self.dir.parent,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if expect_ok:
            assert r.returncode == 0, (r.stdout, r.stderr[-6000:])
        return r

    def results(self) -> list[dict[str, object]]:
        return [json.loads((self.out / f"rank{r}.json").read_text()) for r in range(NP)]

    def newest_parts(self) -> Path:
        parts = self.dir / "mpitrain.ckpt.parts"
        return max((p for p in parts.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def each(job: Job, key: str) -> list[object]:
    """``key`` of every rank's result."""
    return [x[key] for x in job.results()]


@pytest.fixture(scope="module")
def reference(mpirun: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The digests of an uninterrupted run (which checkpoints every 5 steps: saving changes nothing)."""
    job = Job(mpirun, tmp_path_factory.mktemp("reference"))
    r = job.run(TRAIN_EVERY="5")
    assert each(job, "restored") == [None] * NP, (r.stdout, r.stderr)
    results = job.results()
    assert all(x["step"] == STEPS for x in results)
    return [str(x["digest"]) for x in results]


def test_a_signal_to_one_rank_checkpoints_every_rank_at_the_same_step(mpirun, reference, tmp_path):
    job = Job(mpirun, tmp_path)
    # SIGTERM to rank 2 alone after step 7: every rank saves step 7 and leaves there.
    r = job.run(TRAIN_SIGNAL="2:7:TERM")
    assert each(job, "exited") == [7] * NP, (r.stdout, r.stderr)
    assert each(job, "step") == [7] * NP
    # The restart resumes step 7 on every rank and ends where the uninterrupted run ended.
    r = job.run()
    assert each(job, "restored") == [7] * NP, (r.stdout, r.stderr)
    assert [x["digest"] for x in job.results()] == reference


def test_killed_and_restarted_resumes_the_last_committed_step(mpirun, reference, tmp_path):
    job = Job(mpirun, tmp_path)
    # Rank 0 alone requests a checkpoint every 5 steps (the others learn it from the collective poll);
    # rank 1 is killed after step 12: the job dies with steps 5 and 10 committed.
    r = job.run(expect_ok=False, TRAIN_EVERY="5", TRAIN_SIGNAL="1:12:KILL")
    assert r.returncode != 0, (r.stdout, r.stderr)
    r = job.run(TRAIN_EVERY="5")
    assert each(job, "restored") == [10] * NP, (r.stdout, r.stderr)
    assert [x["digest"] for x in job.results()] == reference


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_part_on_one_rank_sends_every_rank_back_together(mpirun, reference, tmp_path, damage):
    job = Job(mpirun, tmp_path)
    r = job.run(expect_ok=False, TRAIN_EVERY="5", TRAIN_SIGNAL="1:17:KILL")  # steps 5, 10, 15 committed
    assert r.returncode != 0
    part = job.newest_parts() / "rank3.ckpt"
    assert part.exists(), sorted(p.name for p in job.newest_parts().iterdir())
    if damage == "corrupt":
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
    else:
        part.unlink()
    # Rank 3 cannot read step 15: every rank restarts from step 10 (the minimum, never the maximum).
    r = job.run(TRAIN_EVERY="5")
    assert each(job, "restored") == [10] * NP, (r.stdout, r.stderr)
    assert [x["digest"] for x in job.results()] == reference


def test_a_background_save_on_a_signal_commits_the_step_before_every_rank_leaves(mpirun, reference, tmp_path):
    job = Job(mpirun, tmp_path)
    # save(blocking=False) on every rank after rank 2's SIGTERM: should_exit() waits until every rank's
    # part is durable and the step is committed, then every rank leaves at step 7.
    r = job.run(TRAIN_ASYNC="1", TRAIN_SIGNAL="2:7:TERM")
    assert each(job, "exited") == [7] * NP, (r.stdout, r.stderr)
    manifest = job.dir / "mpitrain.ckpt"
    assert manifest.exists(), sorted(p.name for p in job.dir.iterdir())
    r = job.run(TRAIN_ASYNC="1")
    assert each(job, "restored") == [7] * NP, (r.stdout, r.stderr)
    assert [x["digest"] for x in job.results()] == reference


def generations(job: Job) -> dict[int, list[str]]:
    """The generations whose step manifests exist, and the part files of each."""
    parts = job.dir / "mpitrain.ckpt.parts"
    manifests = sorted(int(p.name.rsplit(".", 1)[1]) for p in job.dir.glob("mpitrain.ckpt.[0-9]*"))
    return {g: sorted(p.name for p in (parts / str(g)).iterdir()) if (parts / str(g)).is_dir() else [] for g in
            manifests}


@pytest.mark.parametrize("background", ["0", "1"], ids=["blocking", "background"])
def test_keep_best_across_ranks_and_restore_of_a_chosen_step(mpirun, reference, tmp_path, background):
    job = Job(mpirun, tmp_path)
    # A save every 2 steps (generations 1..10 hold steps 2..20), keep=3 and keep_best=1 by rank 0's
    # metric (best at step 6, generation 3; the other ranks' metric would pick step 14, generation 7).
    r = job.run(TRAIN_EVERY="2", TRAIN_BEST="1", TRAIN_ASYNC=background)
    assert each(job, "step") == [STEPS] * NP, (r.stdout, r.stderr)
    ranks = [f"rank{i}.ckpt" for i in range(NP)]
    assert generations(job) == {3: ranks, 8: ranks, 9: ranks, 10: ranks}, (r.stdout, r.stderr)
    kept = ("3", "8", "9", "10")
    leftovers = sorted(p.name for p in (job.dir / "mpitrain.ckpt.parts").iterdir() if p.name not in kept)
    assert not [n for n in leftovers if n.isdigit()], f"parts of retired steps left: {leftovers}"

    # Every rank restores step 6 (the best one; the saves after it ran while x was updated in place,
    # so this also checks what the background saves captured) and ends where the uninterrupted run ended.
    r = job.run(TRAIN_RESTORE_STEP="6", TRAIN_ASYNC=background)
    assert each(job, "restored") == [6] * NP, (r.stdout, r.stderr)
    assert [x["digest"] for x in job.results()] == reference
    r = job.run(TRAIN_RESTORE_STEP="18", TRAIN_ASYNC=background)
    assert each(job, "restored") == [18] * NP, (r.stdout, r.stderr)
    assert [x["digest"] for x in job.results()] == reference


def test_restore_of_a_step_that_a_rank_lacks_fails_on_every_rank(mpirun, tmp_path):
    job = Job(mpirun, tmp_path)
    r = job.run(TRAIN_EVERY="5")  # steps 5, 10, 15, 20; keep=3 retires step 5
    assert each(job, "step") == [STEPS] * NP, (r.stdout, r.stderr)
    # A step nobody has: every rank raises NoValidCheckpointError, none starts fresh.
    r = job.run(expect_ok=False, TRAIN_RESTORE_STEP="5")
    assert r.returncode != 0
    assert each(job, "error") == ["NoValidCheckpointError"] * NP, (r.stdout, r.stderr)
    assert all("step 5" in str(m) for m in each(job, "message"))
    # Rank 2's part of step 10 removed: every rank refuses loudly, naming rank 2, rather than load a mix.
    (job.dir / "mpitrain.ckpt.parts" / "2" / "rank2.ckpt").unlink()
    r = job.run(expect_ok=False, TRAIN_RESTORE_STEP="10")
    assert r.returncode != 0
    assert each(job, "error") == ["NoValidCheckpointError"] * NP, (r.stdout, r.stderr)
    assert all("rank(s) 2 " in str(m) for m in each(job, "message")), each(job, "message")
    # Its other steps still restore on every rank.
    r = job.run(TRAIN_RESTORE_STEP="15")
    assert each(job, "restored") == [15] * NP, (r.stdout, r.stderr)


@pytest.mark.parametrize("background", ["0", "1"], ids=["blocking", "background"])
def test_a_requeue_on_the_same_nodes_restarts_every_rank_from_its_node_s_cache(mpirun, reference, tmp_path, background):
    job = Job(mpirun, tmp_path)
    caches = tmp_path / "caches"  # two simulated nodes: ranks 0-1 cache in node0, ranks 2-3 in node1
    # SIGTERM to rank 2 after step 7: every rank saves step 7 to its node's cache, and the step is copied to
    # the checkpoint directory. The ranks compute on meanwhile (should_exit turns true once the copy is
    # durable, a few steps later or after the last one; the end of the program waits for the copy).
    r = job.run(TRAIN_CACHE=str(caches), TRAIN_SIGNAL="2:7:TERM", TRAIN_ASYNC=background)
    exited = each(job, "exited")
    assert len(set(exited)) == 1 and (exited[0] is None or int(str(exited[0])) >= 7), (exited, r.stdout, r.stderr)
    assert (job.dir / "mpitrain.ckpt").is_file(), r.stderr
    g = int(job.newest_parts().name)
    # Rank 0 committed the step's manifest in node 0's cache; node 1's ranks recorded it in theirs.
    node_dirs = [next((caches / f"node{n}").iterdir()) for n in range(2)]
    for n, d in enumerate(node_dirs):
        assert (d / f"mpitrain.ckpt.{g}").is_file(), (n, sorted(p.name for p in d.iterdir()), r.stderr)
        ranks = sorted(p.name for p in (d / "mpitrain.ckpt.parts" / str(g)).iterdir())
        assert ranks == [f"rank{2 * n}.ckpt", f"rank{2 * n + 1}.ckpt"], (n, ranks)
    # Requeued on the same nodes, the checkpoint directory's copy of the step hidden: every rank restarts
    # from its node's cache, at step 7, and ends where the uninterrupted run ended.
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("mpitrain.ckpt", f"mpitrain.ckpt.{g}"):
        (job.dir / name).rename(aside / name)
    r = job.run(TRAIN_CACHE=str(caches), TRAIN_ASYNC=background)
    assert each(job, "restored") == [7] * NP, (r.stdout, r.stderr)
    for rank, f in enumerate(each(job, "file")):
        assert Path(str(f)).is_relative_to(node_dirs[rank // 2]), (rank, f)
    assert [x["digest"] for x in job.results()] == reference


@pytest.mark.parametrize("background", ["0", "1"], ids=["blocking", "background"])
def test_a_lost_node_restarts_from_the_partner_copies(mpirun, reference, tmp_path, background):
    job = Job(mpirun, tmp_path)
    caches = tmp_path / "caches"  # ranks 0-1 on node0, 2-3 on node1; each part also kept on the other node
    r = job.run(TRAIN_CACHE=str(caches), TRAIN_SIGNAL="2:7:TERM", TRAIN_ASYNC=background, CKPT_PARTNER="1")
    assert "failed" not in r.stderr, r.stderr
    g = int(job.newest_parts().name)
    node_dirs = [next((caches / f"node{n}").iterdir()) for n in range(2)]
    for n, kept in ((0, [2, 3]), (1, [0, 1])):
        copies = node_dirs[n] / "mpitrain.ckpt.partner"
        assert sorted(p.name for p in copies.iterdir()) == [str(g)], (n, r.stderr)
        for rank in kept:
            own = job.dir / "mpitrain.ckpt.parts" / str(g) / f"rank{rank}.ckpt"
            assert (copies / str(g) / f"rank{rank}.ckpt").read_bytes() == own.read_bytes(), (n, rank)
    # Node 1 is lost, and so is what the checkpoint directory holds: without the copies on node 0 no step
    # is readable on every rank (an error, never a silent fresh start)...
    shutil.rmtree(caches / "node1")
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in job.dir.iterdir():
        p.rename(aside / p.name)
    copies = node_dirs[0] / "mpitrain.ckpt.partner"
    copies.rename(tmp_path / "copies-aside")
    r = job.run(expect_ok=False, TRAIN_CACHE=str(caches), CKPT_PARTNER="1")
    assert r.returncode != 0, (r.stdout, r.stderr)
    (tmp_path / "copies-aside").rename(copies)
    # ... with them, ranks 2 and 3 get their parts back from node 0 and every rank resumes at step 7.
    r = job.run(TRAIN_CACHE=str(caches), TRAIN_ASYNC=background, CKPT_PARTNER="1")
    for rank in (2, 3):
        assert f"ckpt: rank {rank}: its part of generation {g} restored from the copy on rank " in r.stderr, r.stderr
    assert "rank 0: its part" not in r.stderr and "rank 1: its part" not in r.stderr, r.stderr
    assert each(job, "restored") == [7] * NP, (r.stdout, r.stderr)
    assert [x["digest"] for x in job.results()] == reference


def test_three_cycles_each_losing_a_node_restart_from_the_partner_copies(mpirun, reference, tmp_path):
    """Three restarts in a row, each after losing a whole node and the checkpoint directory's files: node 1
    after step 7, node 0 after step 12 (its ranks' parts now come from the copies node 1 kept of the
    restarted run), node 1 again after step 16. Every restart resumes the last SIGTERM step, and the last
    run ends as the uninterrupted one."""
    job = Job(mpirun, tmp_path)
    caches = tmp_path / "caches"
    run = {"TRAIN_CACHE": str(caches), "CKPT_PARTNER": "1"}
    restored, lost_before = None, None
    for stop, lost in [(7, 1), (12, 0), (16, 1), (None, None)]:
        r = job.run(**run) if stop is None else job.run(TRAIN_SIGNAL=f"2:{stop}:TERM", **run)
        assert "failed" not in r.stderr, (stop, r.stderr)
        assert each(job, "restored") == [restored] * NP, (stop, r.stdout, r.stderr)
        if lost_before is not None:
            # The ranks of the node lost before this run came back from the other node's copies; no other.
            for rank in range(NP):
                came_back = f"ckpt: rank {rank}: its part of generation " in r.stderr
                assert came_back == (rank // 2 == lost_before), (stop, rank, r.stderr)
        if stop is None:
            break
        exited = each(job, "exited")
        assert len(set(exited)) == 1 and (exited[0] is None or int(str(exited[0])) >= stop), (stop, exited)
        # The node is lost, and so is what the checkpoint directory holds.
        shutil.rmtree(caches / f"node{lost}")
        for p in job.dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        restored, lost_before = stop, lost
    assert [x["digest"] for x in job.results()] == reference

