"""Where a run's arrays live: a device mesh from `mesh.*`, and multi-host start-up.

One run: a `data` × `fsdp` mesh. The batch is split over every device (data and fsdp both take
their own slice of it, as in FSDP); each parameter and optimizer-state array is split along its
largest axis that `fsdp` divides (replicated when none does). A vmapped sweep group instead
splits its member axis over a `members` mesh, so G small proxies train at once on G devices.
All of it is `jax.jit` in/out shardings and `jax.device_put`: XLA inserts the collectives.
One device gives no layout at all, so the single-device step is exactly the unsharded one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from proxies.config import ConfigError, DistributedMode, MeshConfig, unhandled

DATA, FSDP, MEMBERS = "data", "fsdp", "members"


def distributed_wanted(mc: MeshConfig) -> bool:
    """`mesh.distributed`: auto = a multi-task SLURM step, or an explicit JAX coordinator."""
    match DistributedMode(mc.distributed):
        case DistributedMode.on:
            return True
        case DistributedMode.off:
            return False
        case DistributedMode.auto:
            return (int(os.environ.get("SLURM_NTASKS", "1")) > 1
                    or "JAX_COORDINATOR_ADDRESS" in os.environ
                    or mc.coordinator_address is not None)
        case mode:
            unhandled("mesh.distributed", mode)


def initialize_distributed(mc: MeshConfig) -> bool:
    """`jax.distributed.initialize()` once, before anything touches a device. JAX reads SLURM's
    variables itself; explicit `mesh.coordinator_address` etc. override them. True if multi-host."""
    if not distributed_wanted(mc):
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=mc.coordinator_address,
                                   num_processes=mc.num_processes, process_id=mc.process_id)
    return jax.process_count() > 1


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def mesh_shape(mc: MeshConfig, n_devices: int) -> Tuple[int, int]:
    """(data, fsdp) with -1 resolved to the devices the other axis leaves."""
    data, fsdp = mc.data, mc.fsdp
    if data == -1:
        data = n_devices // fsdp
    elif fsdp == -1:
        fsdp = n_devices // data
    if data < 1 or fsdp < 1 or data * fsdp > n_devices or (
            -1 in (mc.data, mc.fsdp) and data * fsdp != n_devices):
        raise ConfigError(f"mesh.data={mc.data} × mesh.fsdp={mc.fsdp} does not fit the "
                          f"{n_devices} devices here; use counts whose product divides "
                          f"{n_devices} (or -1 for one of them)")
    return data, fsdp


def fsdp_spec(shape: Tuple[int, ...], n: int) -> P:
    """Split the largest axis that n divides over `fsdp`; scalars and the indivisible replicate."""
    if n > 1:
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % n == 0:
                return P(*[FSDP if a == axis else None for a in range(len(shape))])
    return P()


@dataclass(frozen=True)
class Layout:
    """Shardings of one group's arrays on its mesh: a run's (data, fsdp) or a group's members."""

    mesh: Mesh
    vmapped: bool

    @property
    def key(self) -> str:
        return f"{dict(self.mesh.shape)}"

    def state(self, tree: Any) -> Any:
        """Shardings of a (stacked, when vmapped) train state, or any pytree shaped like it."""
        if self.vmapped:
            return jax.tree_util.tree_map(lambda x: self._on(P(MEMBERS)), tree)
        n = self.mesh.shape[FSDP]
        return jax.tree_util.tree_map(lambda x: self._on(fsdp_spec(np.shape(x), n)), tree)

    def hparams(self, tree: Any) -> Any:
        spec = P(MEMBERS) if self.vmapped else P()
        return jax.tree_util.tree_map(lambda x: self._on(spec), tree)

    def batch(self) -> NamedSharding:
        """A group's members share each batch; a run splits it over all its devices."""
        return self._on(P()) if self.vmapped else self._on(P((DATA, FSDP)))

    def replicated(self) -> NamedSharding:
        return self._on(P())

    def put(self, tree: Any, shardings: Any) -> Any:
        """Host-identical values onto the mesh (across processes from host memory)."""
        if jax.process_count() > 1:
            tree = jax.device_get(tree)
        return jax.device_put(tree, shardings)

    def put_batch(self, batch: np.ndarray) -> jax.Array:
        """A host batch (every process holds the whole, a function of (seed, step)) as one global
        array: each process fills only the shards its devices hold."""
        batch = np.asarray(batch)
        return jax.make_array_from_callback(batch.shape, self.batch(), lambda idx: batch[idx])

    def _on(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)


def run_layout(mc: MeshConfig, batch_size: int) -> Optional[Layout]:
    """The (data, fsdp) layout of one run; None on one device."""
    devices = jax.devices()
    data, fsdp = mesh_shape(mc, len(devices))
    if data * fsdp == 1:
        return None
    if batch_size % (data * fsdp):
        raise ConfigError(f"train.batch_size={batch_size} does not split over mesh.data={data} × "
                          f"mesh.fsdp={fsdp} devices; make it a multiple of {data * fsdp} or set "
                          "mesh.data/mesh.fsdp to use fewer devices")
    return Layout(_mesh((data, fsdp), (DATA, FSDP), devices[:data * fsdp]), vmapped=False)


def group_layout(mc: MeshConfig, group_size: int) -> Optional[Layout]:
    """The members layout of a vmapped group: its member axis over the most of the mesh's
    devices (this process's) that divide the group size (8 runs on 8 devices: one each). None
    when that is one device."""
    devices = jax.local_devices()
    data, fsdp = mesh_shape(mc, len(devices))
    n = data * fsdp
    k = max(d for d in range(1, min(group_size, n) + 1) if group_size % d == 0)
    if k == 1:
        return None
    return Layout(_mesh((k,), (MEMBERS,), devices[:k]), vmapped=True)


def _mesh(shape: Tuple[int, ...], names: Tuple[str, ...], devices: Any) -> Mesh:
    # Auto axes: the compiler propagates shardings from jit's in/out shardings (the model code
    # stays sharding-agnostic), rather than JAX's explicit-sharding mode.
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices)
