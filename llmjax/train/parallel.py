"""How a train step runs on the devices, by name: none (one device), mesh (jit + shardings),
pmap (classic data parallelism).

Each mode turns a pure step into a compiled one, creates or restores the state where it lives,
and places host batches on the devices. In a multi-process run each process passes only its own
block of a batch (`local_slices`), and `put` assembles the global array from the blocks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from llmjax import sharding
from llmjax.distributed import DistributedError, local_region
from llmjax.registry import Registry
from llmjax.runtime import jit_once

if TYPE_CHECKING:
    from llmjax.config import Config
    from llmjax.train.state import TrainState

PARALLELISM: Registry = Registry("parallel mode")
HostBatch = dict[str, np.ndarray]


def _single_process(mode: str) -> None:
    if jax.process_count() > 1:
        raise DistributedError(
            f"parallel.mode={mode} runs on one process, but this run has {jax.process_count()}; "
            f"use parallel.mode=mesh (--mesh ...) across hosts"
        )


def _abstract(init_boxed: Callable[[jax.Array], TrainState]) -> tuple[Any, Any]:
    """(ShapeDtypeStructs of the unboxed state, logical PartitionSpecs of every leaf)."""
    boxed = jax.eval_shape(init_boxed, jax.random.key(0))
    return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


class ParallelMode:
    """What every mode provides; the defaults suit one process holding whole batches."""

    axis_name: str | None = None  # the pmap axis a step sums over, if any
    # Whether fit may compile the steps before their first call, from the stand-ins below.
    compiles_ahead: bool = True

    @staticmethod
    def adapt_config(cfg: Config) -> Config:
        """The config a fresh run uses in this mode (e.g. a padded vocabulary)."""
        return cfg

    def local_slices(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        """This process's block of a global batch of `shape`."""
        return tuple(slice(0, n) for n in shape)

    def put_eval_batch(self, batch: HostBatch) -> Any:
        """Places a whole host batch for eval_step."""
        return batch

    def host_state(self, state: TrainState) -> TrainState:
        """The state as checkpoints, evaluation and callers see it."""
        return state

    def device_state(self, state: TrainState) -> TrainState:
        """A restored host state placed for train_step."""
        return state

    # Shapes of a fresh state and of a placed host batch, matching what the compiled steps
    # are then called with (so that a step can be compiled before its first call).

    def fresh_state_shapes(self, init: Callable[[jax.Array], TrainState], key: jax.Array) -> Any:
        return jax.eval_shape(init, key)

    def batch_shapes(self, batch: HostBatch) -> Any:
        return _placed(batch, None)


class InMesh:
    """A jitted function that enters its mesh and the rules table whenever it is called or
    lowered: linen reads them while tracing, and jit may (re)trace on any call."""

    def __init__(self, jitted: Any, mesh: jax.sharding.Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args: Any) -> Any:
        with sharding.use_mesh(self.mesh):
            return self.jitted(*args)

    def lower(self, *args: Any) -> jax.stages.Lowered:
        with sharding.use_mesh(self.mesh):
            return self.jitted.lower(*args)


@PARALLELISM.register("none")
class SingleDevice(ParallelMode):
    """Plain jit on the default device: no shardings, no constraints, nothing extra per step."""

    def __init__(self, cfg: Config, init_boxed: Callable[[jax.Array], TrainState]):
        _single_process("none")
        self.device = jax.devices()[0]
        self._init_boxed = init_boxed

    def init_state(self, init: Callable[..., TrainState], *args: Any) -> TrainState:
        return jit_once(init)(*args)

    def abstract_state(self) -> TrainState:
        shapes, _ = _abstract(self._init_boxed)  # traced only when a checkpoint is restored
        return _placed(shapes, SingleDeviceSharding(self.device))

    def train_step(self, fn: Callable) -> Callable:
        return jax.jit(fn, donate_argnums=0)

    def eval_step(self, fn: Callable) -> Callable:
        return jax.jit(fn)

    def put(self, local: HostBatch, global_shape: tuple[int, ...]) -> Any:
        return local  # jit moves numpy arguments to the device


@PARALLELISM.register("mesh")
class MeshParallel(ParallelMode):
    """jit over a (data, fsdp, sequence, tensor) mesh; state and batches carry NamedShardings.

    The state is created directly sharded (init compiled with out_shardings), so no device
    ever holds a whole copy of it.
    """

    def __init__(self, cfg: Config, init_boxed: Callable[[jax.Array], TrainState]):
        self.mesh = sharding.make_mesh(cfg.parallel.mesh or "data=-1")
        self.shapes, logical = _abstract(init_boxed)
        sharding.check_divisible(self.shapes.params, logical.params, self.mesh)
        sharding.check_batch(cfg.data.batch_size, cfg.seq_len, cfg.train.grad_accum, self.mesh)
        self.state_sharding = sharding.logical_shardings(logical, self.mesh)
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @staticmethod
    def adapt_config(cfg: Config) -> Config:
        """Pads the vocabulary so the tensor axis divides it (to a multiple of 128 where that
        works, so the checkpoint also fits meshes with other power-of-two tensor sizes)."""
        shape = sharding.parse_mesh(cfg.parallel.mesh or "data=-1")
        shape = sharding.resolve_mesh_shape(shape, jax.device_count())
        tensor = shape["tensor"]
        if cfg.model.padded_vocab_size % tensor == 0:
            return cfg
        multiple = 128 if 128 % tensor == 0 else tensor
        multiple = math.lcm(cfg.model.vocab_multiple, multiple)
        return dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, vocab_multiple=multiple)
        )

    def init_state(self, init: Callable[..., TrainState], *args: Any) -> TrainState:
        return InMesh(jit_once(init, out_shardings=self.state_sharding), self.mesh)(*args)

    def abstract_state(self) -> TrainState:
        return _placed(self.shapes, self.state_sharding)

    def fresh_state_shapes(self, init: Callable[[jax.Array], TrainState], key: jax.Array) -> Any:
        return self.abstract_state()

    def batch_shapes(self, batch: HostBatch) -> Any:
        return _placed(batch, self.batch_sharding)

    def train_step(self, fn: Callable) -> Callable:
        return InMesh(
            jax.jit(
                fn,
                in_shardings=(self.state_sharding, self.batch_sharding),
                out_shardings=(self.state_sharding, self.replicated),
                donate_argnums=0,
            ),
            self.mesh,
        )

    def eval_step(self, fn: Callable) -> Callable:
        return InMesh(
            jax.jit(
                fn,
                in_shardings=(
                    self.state_sharding.params,
                    self.state_sharding.model_state,
                    self.batch_sharding,
                ),
                out_shardings=self.replicated,
            ),
            self.mesh,
        )

    def local_slices(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        return local_region(self.batch_sharding, shape)

    def put(self, local: HostBatch, global_shape: tuple[int, ...]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(
                self.batch_sharding, v, global_shape + v.shape[len(global_shape) :]
            )
            for k, v in local.items()
        }

    def put_eval_batch(self, batch: HostBatch) -> dict[str, jax.Array]:
        shape = batch["inputs"].shape
        region = self.local_slices(shape)
        return self.put({k: v[region] for k, v in batch.items()}, shape)


@PARALLELISM.register("pmap")
class PmapParallel(ParallelMode):
    """jax.pmap over the local devices: the state is replicated, each device takes B/n rows,
    and the step sums gradients over the "batch" axis (see make_train_step's axis_name)."""

    axis_name = "batch"
    compiles_ahead = False  # its steps take per-device stacks, not the stand-ins' shapes

    def __init__(self, cfg: Config, init_boxed: Callable[[jax.Array], TrainState]):
        _single_process("pmap")
        self.devices = jax.local_devices()
        self._init_boxed = init_boxed
        sharding.check_batch_split(
            cfg.data.batch_size, cfg.train.grad_accum, len(self.devices), "pmap"
        )
        mesh = jax.sharding.Mesh(np.asarray(self.devices), (self.axis_name,))
        self.stacked = NamedSharding(mesh, PartitionSpec(self.axis_name))

    def _replicate(self, tree: Any) -> Any:
        def copy(x):
            pieces = [jax.device_put(x[None], d) for d in self.devices]
            return jax.make_array_from_single_device_arrays(
                (len(self.devices), *x.shape), self.stacked, pieces
            )

        return jax.tree.map(copy, tree)

    def init_state(self, init: Callable[..., TrainState], *args: Any) -> TrainState:
        return self._replicate(jit_once(init)(*args))

    def abstract_state(self) -> TrainState:
        shapes, _ = _abstract(self._init_boxed)
        return _placed(shapes, SingleDeviceSharding(self.devices[0]))

    def train_step(self, fn: Callable) -> Callable:
        step = jax.pmap(fn, axis_name=self.axis_name, donate_argnums=0, devices=self.devices)

        def call(state, batch):
            state, metrics = step(state, batch)
            return state, _first(metrics)

        return call

    def eval_step(self, fn: Callable) -> Callable:
        return jax.jit(fn)  # on the first replica's params (host_state); batches stay on host

    def put(self, local: HostBatch, global_shape: tuple[int, ...]) -> dict[str, jax.Array]:
        n = len(self.devices)
        return {
            k: jax.device_put(v.reshape(n, v.shape[0] // n, *v.shape[1:]), self.stacked)
            for k, v in local.items()
        }

    def host_state(self, state: TrainState) -> TrainState:
        return _first(state)

    def device_state(self, state: TrainState) -> TrainState:
        return self._replicate(state)


def _placed(shapes: Any, where: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: one sharding for all leaves (None: none), or a
    tree of them."""
    if where is not None and not isinstance(where, jax.sharding.Sharding):
        return jax.tree.map(
            lambda s, w: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=w), shapes, where
        )
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), shapes)


def _first(tree: Any) -> Any:
    """The first device's copy of each replicated leaf (no cross-device gather)."""
    return jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), tree)
