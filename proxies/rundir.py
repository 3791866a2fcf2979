"""A run directory and its files, owned here: names, atomic writes, reading back, repair, lock.

    out_dir/
      config.yaml     the resolved config plus `run:` metadata; its identity is checked on reuse
      metrics.jsonl   one row per log or eval step, appended as the run goes
      events.jsonl    spike events (step, z-scores, action, batches skipped) and early
                      warnings (signal, value, limit, forecast step), appended
      signals.jsonl   with train.monitor.enabled: one row per update of what the monitor reads
      summary.json    written once, atomically, when the run ends
      checkpoints/    orbax, one directory per step (proxies/checkpoint.py)
      dynamics/       with dynamics.enabled: stats.jsonl (one row of scalars per probe step) and
                      hist/step_<step>.npz (fixed-edge histograms, top channels, E/R samples)
      .lock           held by the process training here

Nothing already written is thrown away: a bad metrics line is moved to metrics.bad.jsonl, a damaged
checkpoint to checkpoints.damaged/. A write the disk refuses (full, over quota, read-only, failing)
is a `StorageError`: one line naming the path and the fix, the run left to resume.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import yaml
from omegaconf import DictConfig

from proxies.config import ConfigError, first_difference, identity, identity_of
from proxies.metric_names import STEP

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
BAD_METRICS = "metrics.bad.jsonl"
EVENTS = "events.jsonl"
SIGNALS = "signals.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
DYNAMICS = "dynamics"
DYN_STATS = "stats.jsonl"
DYN_HIST = "hist"
DAMAGED = "checkpoints.damaged"
LOCK = ".lock"
LOCK_TRIES = 5  # over 0.2 s

Say = Callable[[str], None]


class RunDirError(ConfigError):
    """A run directory that cannot be used as it is; the message names the fix."""


class RunBusy(RunDirError):
    """Another process is training in the run directory (it holds the lock)."""


# ------------------------------------------------------------------------------ write errors

class StorageError(Exception):
    """The OS refused a write: the fix is on the machine (space, quota, the disk), not in the
    config. Nothing already written is lost and the run resumes from its last checkpoint."""


# Errors of the disk, not of the program: each has one fix, on the machine.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}
_TS_ERRNO = re.compile(r"os_error_code='?(\d+)")  # tensorstore's form (orbax checkpoints)
_TS_PATH = re.compile(r'(?:Failed writing:|local file) "([^"]+)"')


def _tensorstore_errno(text: str) -> Optional[int]:
    """The storage errno in tensorstore's text of an OS error; None if it names none."""
    m = _TS_ERRNO.search(text)
    return int(m.group(1)) if m and int(m.group(1)) in STORAGE_ERRNOS else None


def storage_message(path: Any, code: int, detail: str = "") -> str:
    elsewhere = "or point out_dir / sweep.run_root / data.cache_dir at another disk"
    match code:
        case errno.ENOSPC | errno.EDQUOT:
            fix = f"free space there ({elsewhere})"
        case errno.EROFS:
            fix = f"make it writable ({elsewhere})"
        case errno.EFBIG:
            fix = "raise the file-size limit (ulimit -f)"
        case _:
            fix = f"check that disk ({elsewhere})"
    what = "disk error at" if code == errno.EIO else "cannot write"
    return (f"{what} {path or 'the run directory'}: {os.strerror(code)}{detail}; {fix}; then "
            "rerun the same command: what was written is kept and unfinished runs resume from "
            "their last checkpoints")


def storage_error(e: BaseException, where: Any = None) -> Optional[StorageError]:
    """The one-line StorageError for a refused write anywhere in `e`'s chain (an OSError, or
    tensorstore's text of one); None when `e` is something else. `where` names the path when
    the error's own is an internal file (a checkpoint shard)."""
    seen = set()
    x: Optional[BaseException] = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, StorageError):
            return x
        if isinstance(x, ConfigError):  # already our one line (an unwritable out_dir, ...)
            return None
        if isinstance(x, OSError) and x.errno in STORAGE_ERRNOS:
            return StorageError(storage_message(where or x.filename, x.errno))
        code = _tensorstore_errno(str(x))
        if code is not None:
            path = _TS_PATH.search(str(x))
            return StorageError(storage_message(where or (path and path.group(1)), code))
        x = x.__cause__ or x.__context__
    return None


@contextlib.contextmanager
def writing(where: Any = None) -> Iterator[None]:
    """Turn a refused write inside the block into its one-line StorageError."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        se = storage_error(e, where)
        if se is None:
            raise
        raise se from e


class _StorageNoise(logging.Filter):
    """Drops the log records orbax's writer threads and asyncio emit for a write the disk
    refused: the same failure reaches the caller as one StorageError."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        return not (_tensorstore_errno(text) is not None
                    or any(os.strerror(c) in text for c in STORAGE_ERRNOS))


def quiet_storage_noise() -> None:
    """Keep a refused write to its one line: orbax's and asyncio's own reports of it dropped."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _StorageNoise) for f in logger.filters):
            logger.addFilter(_StorageNoise())


# ------------------------------------------------------------------------------ plain files

def finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; a null marks a non-finite value
    return v


def atomic_write(path: Path, write: Callable[[IO[Any]], None], mode: str = "w") -> None:
    """Write `path` through a temporary file of its own and a rename: a kill leaves the old file
    or the new, never half, and writers in parallel (sweep workers) never share a temporary."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, mode) as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, obj: Dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps({k: finite_or_none(v) for k, v in obj.items()},
                                       indent=2) + "\n")


def read_jsonl(path: Path) -> Tuple[List[Dict[str, Any]], List[Tuple[int, str]]]:
    """(rows, bad lines as (line number, text)). Bad lines are skipped, not the rest after them."""
    rows: List[Dict[str, Any]] = []
    bad: List[Tuple[int, str]] = []
    if not path.exists():
        return rows, bad
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get(STEP), int):
            rows.append(row)
        else:
            bad.append((n, line))
    return rows, bad


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The readable rows of a metrics.jsonl (what analysis and the table read)."""
    return read_jsonl(path)[0]


def append_line(f: IO[str], row: Dict[str, Any]) -> None:
    f.write(json.dumps({k: finite_or_none(v) for k, v in row.items()}) + "\n")
    f.flush()


def read_summary_file(path: Path) -> Optional[Dict[str, Any]]:
    """A summary.json, or None when missing or unreadable (a truncated file from a disk fault)."""
    try:
        obj = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None



def run_finished(run_dir: str | Path) -> bool:
    """The run finished: its summary.json is readable and not empty (an unreadable one is
    rebuilt by training the run's tail again)."""
    return bool(read_summary_file(Path(run_dir) / SUMMARY))

# libyaml's parser where PyYAML has it: a sweep's table reads every run's config, ~10× faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_config_file(path: Path) -> Dict[str, Any]:
    try:
        obj = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return obj if isinstance(obj, dict) else {}


# ------------------------------------------------------------------------------ the directory

class RunDir:
    """One run's directory. `open()` checks it is usable and takes its lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config = self.path / CONFIG
        self.metrics = self.path / METRICS
        self.events = self.path / EVENTS
        self.signals = self.path / SIGNALS
        self.summary = self.path / SUMMARY
        self.checkpoints = self.path / CHECKPOINTS
        self.damaged = self.path / DAMAGED
        self.dynamics = self.path / DYNAMICS
        self._lock: Optional[IO[str]] = None
        self._metrics_file: Optional[IO[str]] = None

    def __str__(self) -> str:
        return str(self.path)

    # ---- start-up checks
    def prepare(self, key: str = "out_dir") -> None:
        """Create the directory; one line if it is a file or cannot be written."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{key} {self.path} is a file, not a directory; pass another {key}")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.path, prefix=".write_test")
            probe.close()
        except OSError as e:
            raise RunDirError(f"cannot write to {key} {self.path} ({e.strerror}); "
                              f"pass a writable {key}") from None

    def lock(self) -> None:
        """Refuse (one line) when another process trains in this directory. The OS drops the
        lock when its holder dies, even by kill -9, so a stale lock never blocks a resume."""
        self._lock = take_lock(self.path / LOCK, f"another process is training in {self.path}",
                               "wait for it to finish or pass another out_dir", RunBusy)

    def release(self) -> None:
        self.close_metrics()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def check_identity(self, cfg: DictConfig) -> None:
        """Refuse a directory that holds a run of another config (resuming it would mix two)."""
        old = read_config_file(self.config)
        if not old:
            return
        old_id, new_id = identity_of(old), identity(cfg)
        old_id["train"] = {k: v for k, v in old_id["train"].items() if k in new_id["train"]}
        diff = first_difference(old_id, new_id)
        if diff:
            raise RunDirError(f"out_dir {self.path} holds a run with a different config "
                              f"({diff}; its config.yaml edited, or from another version); use "
                              "another out_dir, or restore it, or delete that directory")

    # ---- config and summary
    def read_config(self) -> Dict[str, Any]:
        return read_config_file(self.config)

    def write_config(self, resolved: Dict[str, Any]) -> None:
        atomic_write_text(self.config, yaml.safe_dump(resolved, sort_keys=False))

    def read_summary(self, say: Say) -> Optional[Dict[str, Any]]:
        if not self.summary.exists():
            return None
        s = read_summary_file(self.summary)
        if s is None:
            say(f"{self.summary} is unreadable; rebuilding it from the checkpoints and metrics")
            self.summary.rename(self.path / f"{SUMMARY}.unreadable")
        return s

    def write_summary(self, summary: Dict[str, Any]) -> None:
        write_json(self.summary, summary)

    # ---- metrics
    def metrics_rows(self) -> List[Dict[str, Any]]:
        return read_metrics(self.metrics)

    def repair_records(self, last_step: int, say: Say) -> None:
        """Keep the rows and events of steps <= last_step (the resume point): later ones will be
        recomputed. Rollback events stay: they decide the data path. Unreadable lines are moved
        to metrics.bad.jsonl and reported, never a reason to drop the rows after them."""
        rows, bad = read_jsonl(self.metrics)
        if bad:
            with open(self.path / BAD_METRICS, "a") as f:
                f.writelines(text + "\n" for _, text in bad)
            say(f"{self.metrics}: {len(bad)} unreadable line(s) (line {bad[0][0]}"
                f"{' …' if len(bad) > 1 else ''}) moved to {BAD_METRICS}; the other rows are kept")
        kept = [r for r in rows if r[STEP] <= last_step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))
        events = [e for e in read_jsonl(self.events)[0]
                  if e[STEP] <= last_step or e.get("action") == "rollback"]
        atomic_write_text(self.events, "".join(json.dumps(e) + "\n" for e in events))
        if self.signals.exists():
            kept = [r for r in read_jsonl(self.signals)[0] if r[STEP] <= last_step]
            atomic_write_text(self.signals, "".join(json.dumps(r) + "\n" for r in kept))
        self._repair_dynamics(last_step)

    def _repair_dynamics(self, last_step: int) -> None:
        if not self.dynamics.exists():
            return
        rows = [r for r in read_jsonl(self.dynamics / DYN_STATS)[0] if r[STEP] <= last_step]
        atomic_write_text(self.dynamics / DYN_STATS, "".join(json.dumps(r) + "\n" for r in rows))
        for step, path in hist_files(self.path).items():
            if step > last_step:
                path.unlink()

    def rewrite_metrics(self, rows: List[Dict[str, Any]]) -> None:
        self.close_metrics()
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def start_afresh(self) -> None:
        """No checkpoint: the records of an earlier attempt are recomputed from step 0 (rollback
        events stay, they decide the data path)."""
        self.repair_records(-1, lambda _: None)

    def log(self, row: Dict[str, Any]) -> None:
        """Append a row; a refused write leaves the file as it was before the row."""
        with writing(self.metrics):
            if self._metrics_file is None:
                self._metrics_file = open(self.metrics, "a")
            size = os.fstat(self._metrics_file.fileno()).st_size
            try:
                append_line(self._metrics_file, row)
            except OSError:
                f, self._metrics_file = self._metrics_file, None
                try:
                    with contextlib.suppress(OSError):
                        f.close()  # its buffer still holds the row: this flush may fail again
                finally:
                    os.truncate(self.metrics, size)  # after the close: no tail written past it
                raise

    def close_metrics(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    # ---- training dynamics
    def write_dynamics(self, step: int, scalars: Dict[str, Any],
                       arrays: Dict[str, np.ndarray]) -> None:
        """The arrays first (atomically), then the stats row that marks the step recorded."""
        hist = self.dynamics / DYN_HIST
        with writing(hist):
            hist.mkdir(parents=True, exist_ok=True)
        atomic_write(hist / f"step_{step:07d}.npz", lambda f: np.savez_compressed(f, **arrays),
                     "wb")
        with writing(self.dynamics / DYN_STATS), open(self.dynamics / DYN_STATS, "a") as f:
            append_line(f, {STEP: step, **scalars})

    # ---- the monitor's signals
    def signal_rows(self) -> List[Dict[str, Any]]:
        return read_jsonl(self.signals)[0]

    def append_signals(self, rows: List[Dict[str, Any]]) -> None:
        """Append a batch of per-update rows (written on log and checkpoint steps)."""
        with writing(self.signals), open(self.signals, "a") as f:
            for row in rows:
                append_line(f, row)

    # ---- spike events
    def read_events(self) -> List[Dict[str, Any]]:
        return read_jsonl(self.events)[0]

    def append_event(self, event: Dict[str, Any]) -> None:
        """Durable before anything acts on it: a rollback must be found again after a kill."""
        with writing(self.events), open(self.events, "a") as f:
            append_line(f, event)
            os.fsync(f.fileno())


class FollowerRunDir(RunDir):
    """A run directory as seen by the processes of a multi-host run other than the first: they
    read it (resume point, rollback events) but never write it; process 0 keeps the records.
    Checkpoints are not records: every process writes its own shards (orbax)."""

    def prepare(self, key: str = "out_dir") -> None:
        pass

    def lock(self) -> None:
        pass

    def write_config(self, resolved: Dict[str, Any]) -> None:
        pass

    def read_summary(self, say: Say) -> Optional[Dict[str, Any]]:
        return read_summary_file(self.summary) if self.summary.exists() else None

    def write_summary(self, summary: Dict[str, Any]) -> None:
        pass

    def repair_records(self, last_step: int, say: Say) -> None:
        pass

    def rewrite_metrics(self, rows: List[Dict[str, Any]]) -> None:
        pass

    def log(self, row: Dict[str, Any]) -> None:
        pass

    def write_dynamics(self, step: int, scalars: Dict[str, Any],
                       arrays: Dict[str, np.ndarray]) -> None:
        pass

    def append_event(self, event: Dict[str, Any]) -> None:
        pass

    def append_signals(self, rows: List[Dict[str, Any]]) -> None:
        pass


def run_dir(path: Path) -> RunDir:
    """The run directory as this process sees it: the writer, or a follower of a multi-host
    run's process 0."""
    import jax

    return RunDir(path) if jax.process_index() == 0 else FollowerRunDir(path)


def take_lock(path: Path, held: str, fix: str, error: type = RunDirError) -> IO[str]:
    """An exclusive lock on `path` (fcntl, released by the OS when the holder exits)."""
    import fcntl

    f = open(path, "a+")
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:  # held, or a sweep's `lock_holder` looking for an instant: try again
            if attempt < LOCK_TRIES - 1:
                time.sleep(0.05)
    else:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        raise error(f"{held} ({f'pid {pid}' if pid else 'a process just starting'}); "
                    f"{fix}") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def lock_holder(run_dir: str | Path) -> Optional[str]:
    """The pid of the process training in `run_dir` ('' while it is writing it), None when no
    process is."""
    import fcntl

    try:
        f = open(Path(run_dir) / LOCK)
    except OSError:  # never locked
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: two lookers never collide
        except OSError:
            return f.read().strip()
    return None


def hist_files(run_dir: Path) -> Dict[int, Path]:
    """{step: path} of a run's dynamics histogram files, in step order."""
    files = sorted((Path(run_dir) / DYNAMICS / DYN_HIST).glob("step_*.npz"))
    return {int(p.stem.split("_")[1]): p for p in files}


def read_dynamics(run_dir: Path) -> List[Dict[str, Any]]:
    """The readable rows of a run's dynamics/stats.jsonl."""
    return read_jsonl(Path(run_dir) / DYNAMICS / DYN_STATS)[0]
