"""Type stubs of ``ckpt._ckpt``, the native module behind the ``ckpt`` package (private API)."""

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, final

from typing_extensions import Buffer

__all__ = [
    "CORE_VERSION",
    "Checkpointer",
    "MappedBuffer",
    "PICKLE_SECTION",
    "PersistentIds",
    "SaveHandle",
    "absorb_signal",
    "cli_main",
    "effective_config",
    "load_file",
    "list_checkpoints",
    "load_store",
    "reinstall_signal_hooks",
    "save_file",
    "save_store",
    "signal_hook_installed",
    "signal_specs",
    "trust_problems",
    "verify_file",
    "wait_for_background_frees",
    "__version__",
]

__version__: str
CORE_VERSION: str
PICKLE_SECTION: str

_Info = dict[str, Any]
_Loaded = tuple[Buffer, list[Buffer], _Info]

@final
class MappedBuffer:
    """The bytes of one section of a memory-mapped checkpoint (buffer protocol, format ``B``): writable
    (a private copy-on-write mapping, the default) or read-only (``writable=False``).

    Views of it keep the file's mapping alive.
    """

    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview: ...

    def __len__(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def path(self) -> str: ...
    @property
    def section(self) -> str: ...

@final
class PersistentIds:
    """The pickler's ``persistent_id``: calls ``slow`` for bytes/bytearray of ``min`` bytes or more and
    for memoryviews, returns ``None`` for everything else."""

    def __new__(cls, slow: Callable[[Any], Any], min: int) -> PersistentIds: ...
    def __call__(self, obj: Any) -> Any: ...

@final
class SaveHandle:
    """A background save (``Checkpointer.save_async``)."""

    def done(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def result(self) -> _Info | None: ...
    @property
    def step(self) -> int: ...

#: A rank's part of a multi-rank step: (generation, step, file_len, rank, nranks, header_crc32, table_crc32).
_PartIdentity = tuple[int, int, int, int, int, int, int]

@final
class Checkpointer:
    def __new__(
        cls,
        name: str | None = None,
        directory: str | None = None,
        interval: float | str | None = None,
        keep: int | None = None,
        signals: str | None = None,
        keep_best: int = 0,
        metric: str | None = None,
        mode: str = "min",
        rank: tuple[int, int] | None = None,
    ) -> Checkpointer: ...
    def should_checkpoint(self) -> bool: ...
    def should_exit(self) -> bool: ...
    def request_checkpoint(self, exit: bool = False) -> None: ...
    def time_left(self) -> float | None: ...
    def wait_for_flush(self, timeout: float | None = None) -> int | None: ...
    def open_step(self) -> tuple[int, int, int, str] | None: ...
    def load_part(self, rank: int, *, writable: bool = True) -> tuple[Buffer, list[Buffer], dict[str, Any]]: ...
    def durable_generation(self) -> int | None: ...
    def cache_dir(self) -> str | None: ...
    def save(
        self,
        stream: Buffer,
        buffers: Sequence[Buffer],
        *,
        step: int,
        compress: str | None = None,
        item_sizes: list[int] | None = None,
        metrics: str | None = None,
    ) -> _Info: ...
    def save_async(
        self,
        stream: Buffer,
        buffers: Sequence[Buffer],
        *,
        step: int,
        compress: str | None = None,
        item_sizes: list[int] | None = None,
        metrics: str | None = None,
    ) -> SaveHandle: ...
    def exit_pending(self) -> bool: ...
    def release_staging(self) -> None: ...
    # A collective save over MPI (ckpt._mpi): agree on the generation, write this rank's part, gather the
    # parts' identities to rank 0, which commits the step; every rank then learns the outcome.
    def next_generation(self) -> int: ...
    def save_part(
        self,
        stream: Buffer,
        buffers: Sequence[Buffer],
        *,
        generation: int,
        step: int,
        compress: str | None = None,
        item_sizes: list[int] | None = None,
        metrics: str | None = None,
    ) -> tuple[_Info, _PartIdentity]: ...
    def commit_step_parts(self, generation: int, step: int, parts: list[_PartIdentity]) -> _Info: ...
    # With a cache level on any rank: every other rank records the committed step in its node's cache.
    def record_step(self, generation: int, step: int, parts: list[_PartIdentity]) -> bool: ...
    def finish_step(self, committed: bool) -> None: ...
    def restore(
        self, *, mmap: bool | None = None, writable: bool = True, max_generation: int | None = None
    ) -> tuple[_Loaded | None, list[str]]: ...
    def reset_signals_in_child(self) -> None: ...
    def close(self) -> None: ...
    def log_event(self, event: str, fields: str = "{}") -> None: ...
    def mark_damaged(self, generation: int) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def path(self) -> Path: ...
    @property
    def checkpoint_dir(self) -> Path: ...
    @property
    def restart_dir(self) -> Path: ...
    @property
    def name(self) -> str: ...
    @property
    def keep(self) -> int: ...
    @property
    def interval(self) -> float | str | None: ...
    @property
    def signals(self) -> list[tuple[int, bool]]: ...
    @property
    def rank(self) -> tuple[int, int]: ...
    @property
    def socket_path(self) -> Path | None: ...

def save_file(
    path: str,
    stream: Buffer,
    buffers: Sequence[Buffer],
    *,
    step: int,
    compress: str | None = None,
    item_sizes: list[int] | None = None,
    metrics: str | None = None,
) -> _Info: ...
def save_store(
    stream: Buffer,
    buffers: Sequence[Buffer],
    *,
    step: int,
    compress: str | None = None,
    item_sizes: list[int] | None = None,
    metrics: str | None = None,
) -> _Info: ...
def load_file(path: str, *, mmap: bool | None = None, verify: bool = True, writable: bool = True) -> _Loaded: ...
def verify_file(path: str) -> None: ...
def trust_problems(path: str, uid: int, mode: int) -> list[str]: ...
def wait_for_background_frees() -> None: ...
def load_store(
    *, mmap: bool | None = None, writable: bool = True, max_generation: int | None = None
) -> _Loaded | None: ...
def effective_config(
    name: str | None = None,
    directory: str | None = None,
    interval: float | str | None = None,
    keep: int | None = None,
    signals: str | None = None,
) -> dict[str, Any]: ...
def signal_specs(signals: str | None = None) -> list[tuple[int, bool]]: ...
def signal_hook_installed(signal: int) -> bool: ...
def reinstall_signal_hooks(signals: list[int]) -> list[int]: ...
def absorb_signal(signal: int) -> bool: ...
def list_checkpoints(name: str | None = None, directory: str | None = None) -> list[dict[str, Any]]: ...
def cli_main(args: list[str]) -> int: ...
