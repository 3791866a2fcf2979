"""Orbax checkpoints of the whole train state (params, optimizer state, step, spike window) and the
run's RNG, with a fall-back past damaged ones."""

from __future__ import annotations

import dataclasses
import errno
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from proxies.rundir import RunDirError, StorageError, storage_message, writing


def stored_fields(state: Any) -> Any:
    """A train state as saved: its fields by name, those without arrays left out (an empty
    `model_state`), so a checkpoint from before a field existed restores, and one without the
    field's feature keeps that layout. A PyTreeNode is stored as the same dict of its fields."""
    if not dataclasses.is_dataclass(state):
        return state
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return {k: v for k, v in fields.items() if jax.tree_util.tree_leaves(v)}


class Checkpointer:
    def __init__(self, directory: Path, keep: int, damaged_dir: Optional[Path] = None):
        self.directory = Path(directory).absolute()
        self.damaged_dir = damaged_dir or self.directory.with_name(self.directory.name + ".damaged")
        self.keep = keep
        self._mngr = self._open()

    def _open(self) -> ocp.CheckpointManager:
        opts = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
        return ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def save(self, step: int, state: Any, rng: jax.Array) -> None:
        # The key as host numpy: a host-local device array cannot be saved by a multi-host run.
        item = {"state": stored_fields(state), "rng": np.asarray(jax.random.key_data(rng))}
        self.check_space(item)
        with writing(self.directory):  # orbax writes in the background: an earlier save's
            self._mngr.save(step, args=ocp.args.StandardSave(item))  # failure shows here

    def check_space(self, item: Any) -> None:
        """Refuse a save the disk cannot hold, before it starts: orbax writes in background
        threads, and a disk that fills under them leaves a torrent of their errors behind."""
        if jax.process_count() > 1:  # each process would decide alone: orbax's save syncs them
            return
        latest = self._mngr.latest_step()
        step_dir = self.directory / str(latest) if latest is not None else None
        if step_dir is not None and step_dir.is_dir():
            need = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file())
        else:  # the first save: the arrays, and as much again for orbax's files
            need = 2 * sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(item))
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise StorageError(storage_message(
                self.directory, errno.ENOSPC, f" (the next checkpoint needs about "
                f"{need / 1e6:.1f} MB, {free / 1e6:.1f} MB are free)"))

    def restore(self, step: int, like_state: Any, like_rng: jax.Array) -> Tuple[Any, jax.Array]:
        """Restore into the structure (and shardings) of `like_state`."""
        target = {"state": jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                                  stored_fields(like_state)),
                  "rng": np.asarray(jax.random.key_data(like_rng))}
        item = self._mngr.restore(step, args=ocp.args.StandardRestore(target))
        state = (like_state.replace(**item["state"]) if dataclasses.is_dataclass(like_state)
                 else item["state"])
        return state, jax.random.wrap_key_data(jax.numpy.asarray(item["rng"]))

    def restore_newest(self, like_state: Any, like_rng: jax.Array,
                       say: Callable[[str], None]) -> Tuple[int, Any, jax.Array]:
        """(step, state, rng) of the newest checkpoint that restores; (0, like_state, like_rng)
        when there is none. A damaged one (truncated or missing files, no metadata, an empty step
        directory) is named in one line and moved to `<dir>.damaged/`, and the next older tried."""
        steps = sorted(self._mngr.all_steps(), reverse=True)
        for step in steps:
            try:
                state, rng = self.restore(step, like_state, like_rng)
                return step, state, rng
            except Exception as e:  # orbax/tensorstore raise many types for a damaged file
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
                self._quarantine(step)
                say(f"checkpoint {self.directory / str(step)} is unreadable ({reason}); moved to "
                    f"{self.damaged_dir}, trying the next older one")
        if steps:
            raise RunDirError(f"no readable checkpoint in {self.directory} (damaged ones are in "
                              f"{self.damaged_dir}); delete {self.directory.parent} to train the "
                              "run from the start")
        return 0, like_state, like_rng

    def _quarantine(self, step: int) -> None:
        self._mngr.close()
        self.damaged_dir.mkdir(parents=True, exist_ok=True)
        dest = self.damaged_dir / str(step)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(self.directory / str(step)), str(dest))
        self._mngr = self._open()

    def close(self, failing: bool = False) -> None:
        """Wait for the saves in flight. `failing`: the run is ending on an error already, so a
        save's failure (the same full disk, most often) is not raised over it; the incomplete
        step directory is orbax's temporary one, ignored on resume."""
        try:
            with writing(self.directory):
                self._mngr.wait_until_finished()
        except Exception:
            if not failing:
                raise
        finally:
            self._mngr.close()
