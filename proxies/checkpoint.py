"""Orbax checkpoints of the whole train state (params, optimizer state, step) and the run's RNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: Path, keep: int):
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._mngr = ocp.CheckpointManager(directory.absolute(), options=opts)

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def save(self, step: int, state: Any, rng: jax.Array) -> None:
        item = {"state": state, "rng": jax.random.key_data(rng)}
        self._mngr.save(step, args=ocp.args.StandardSave(item))

    def restore(self, step: int, like_state: Any, like_rng: jax.Array) -> Tuple[Any, jax.Array]:
        """Restore into the structure (and shardings) of `like_state`."""
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                        {"state": like_state, "rng": jax.random.key_data(like_rng)})
        item = self._mngr.restore(step, args=ocp.args.StandardRestore(target))
        return item["state"], jax.random.wrap_key_data(item["rng"])

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
