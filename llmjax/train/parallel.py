"""How a train step runs on the devices, by name: none (one device), mesh (jit + shardings),
pmap (classic data parallelism).

Each mode turns a pure step into a compiled one, creates or restores the state where it lives,
places frozen param trees beside it, and places host batches on the devices. In a multi-process
run each process passes only its own block of a batch (`local_slices`), and `put` assembles the
global array from the blocks. Batch fields are [B] or [B, T, ...].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from llmjax import sharding
from llmjax.distributed import DistributedError, local_region
from llmjax.registry import Registry
from llmjax.runtime import jit_once, jit_step

if TYPE_CHECKING:
    from llmjax.config import Config
    from llmjax.train.frozen import FrozenSlot
    from llmjax.train.state import TrainState

PARALLELISM: Registry = Registry("parallel mode")
HostBatch = dict[str, np.ndarray]
Slots = Mapping[str, "FrozenSlot"]


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


def field_shape(local: np.ndarray, global_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The global shape of a batch field whose leading dims are those of `global_shape`
    (None: the local block is the whole batch)."""
    if global_shape is None:
        return tuple(local.shape)
    lead = min(local.ndim, len(global_shape))
    return tuple(global_shape[:lead]) + tuple(local.shape[lead:])


class ParallelMode:
    """What every mode provides; the defaults suit one process holding whole batches."""

    axis_name: str | None = None  # the pmap axis a step sums over, if any
    # Whether fit may compile the steps before their first call, from the stand-ins below.
    compiles_ahead: bool = True

    def __init__(self, cfg: Config, init_boxed: Callable, frozen: Slots | None = None):
        self._init_boxed = init_boxed
        self.frozen = dict(frozen or {})

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

    def put_frozen(self, names: Iterable[str]) -> dict[str, Any]:
        """The frozen trees `names`, placed as the state's params are."""
        where = self._frozen_placement()
        # Copies: the steps donate the state, which must never free the caller's own arrays.
        return {
            name: jax.device_put(self.frozen[name].params, where[name], may_alias=False)
            for name in names
        }

    def _frozen_placement(self) -> dict[str, Any]:
        raise NotImplementedError

    def _with_frozen_shapes(self, state: Any) -> Any:
        if not self.frozen:
            return state
        where = self._frozen_placement()
        return state.replace(
            frozen={n: _placed(s.shapes, where[n]) for n, s in self.frozen.items()}
        )

    # Shapes of a fresh state and of a placed host batch, matching what the compiled steps
    # are then called with (so that a step can be compiled before its first call).

    def fresh_state_shapes(self, init: Callable[[jax.Array], TrainState], key: jax.Array) -> Any:
        return self._with_frozen_shapes(jax.eval_shape(init, key))

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

    def __init__(self, cfg: Config, init_boxed: Callable, frozen: Slots | None = None):
        _single_process("none")
        super().__init__(cfg, init_boxed, frozen)
        self.device = jax.devices()[0]

    def init_state(self, init: Callable[..., TrainState], *args: Any) -> TrainState:
        return jit_once(init)(*args)

    def abstract_state(self) -> TrainState:
        shapes, _ = _abstract(self._init_boxed)  # traced only when a checkpoint is restored
        return self._with_frozen_shapes(_placed(shapes, SingleDeviceSharding(self.device)))

    def _frozen_placement(self) -> dict[str, Any]:
        return dict.fromkeys(self.frozen, SingleDeviceSharding(self.device))

    def train_step(self, fn: Callable) -> Callable:
        return jit_step(fn, donate_argnums=0)

    def eval_step(self, fn: Callable) -> Callable:
        return jit_step(fn)

    def put(self, local: HostBatch, global_shape: tuple[int, ...]) -> Any:
        return local  # jit moves numpy arguments to the device


@PARALLELISM.register("mesh")
class MeshParallel(ParallelMode):
    """jit over a (data, fsdp, expert, sequence, tensor) mesh; state and batches carry
    NamedShardings.

    The state is created directly sharded (init compiled with out_shardings), so no device
    ever holds a whole copy of it. Frozen trees are split by the same logical-axis rules.
    """

    def __init__(self, cfg: Config, init_boxed: Callable, frozen: Slots | None = None):
        super().__init__(cfg, init_boxed, frozen)
        self.mesh = sharding.make_mesh(cfg.parallel.mesh or "data=-1")
        self.shapes, logical = _abstract(init_boxed)
        sharding.check_divisible(self.shapes.params, logical.params, self.mesh)
        for name, slot in self.frozen.items():
            what = f"frozen {name!r} parameter"
            sharding.check_divisible(slot.shapes, slot.logical, self.mesh, what=what)
        sharding.check_batch(cfg.data.batch_size, cfg.seq_len, cfg.train.grad_accum, self.mesh)
        # What init creates (no frozen trees: those are placed next to it) ...
        self.init_sharding = sharding.logical_shardings(logical, self.mesh)
        self.frozen_sharding = {
            name: sharding.logical_shardings(slot.logical, self.mesh)
            for name, slot in self.frozen.items()
        }
        # ... and the whole state the steps take.
        self.state_sharding = self.init_sharding.replace(frozen=self.frozen_sharding or None)
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
        return InMesh(jit_once(init, out_shardings=self.init_sharding), self.mesh)(*args)

    def abstract_state(self) -> TrainState:
        return self._with_frozen_shapes(_placed(self.shapes, self.init_sharding))

    def _frozen_placement(self) -> dict[str, Any]:
        return self.frozen_sharding

    def fresh_state_shapes(self, init: Callable[[jax.Array], TrainState], key: jax.Array) -> Any:
        return self.abstract_state()

    def batch_shapes(self, batch: HostBatch) -> Any:
        return {k: _placed(v, self._field_sharding(v)) for k, v in batch.items()}

    def _field_sharding(self, x: Any) -> NamedSharding:
        return sharding.batch_sharding(self.mesh, np.ndim(x))

    def train_step(self, fn: Callable) -> Callable:
        return InMesh(
            jit_step(
                fn,
                in_shardings=(self.state_sharding, None),  # batches come placed by `put`
                out_shardings=(self.state_sharding, self.replicated),
                donate_argnums=0,
            ),
            self.mesh,
        )

    def eval_step(self, fn: Callable) -> Callable:
        state = self.state_sharding
        return InMesh(
            jit_step(
                fn,
                in_shardings=(state.params, state.model_state, None, state.frozen),
                out_shardings=self.replicated,
            ),
            self.mesh,
        )

    def local_slices(self, shape: tuple[int, ...]) -> tuple[slice, ...]:
        return local_region(self.batch_sharding, shape)

    def put(self, local: HostBatch, global_shape: tuple[int, ...]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(
                self._field_sharding(v), v, field_shape(v, global_shape)
            )
            for k, v in local.items()
        }

    def put_eval_batch(self, batch: HostBatch) -> dict[str, jax.Array]:
        # The [B, T] of the batch: its inputs', or (a batch of pairs) its first 2-d field's.
        name = (
            "inputs" if "inputs" in batch else next(k for k, v in batch.items() if np.ndim(v) == 2)
        )
        shape = np.shape(batch[name])
        region = self.local_slices(shape)
        return self.put({k: v[region[: v.ndim]] for k, v in batch.items()}, shape)


@PARALLELISM.register("pmap")
class PmapParallel(ParallelMode):
    """jax.pmap over the local devices: the state is replicated, each device takes B/n rows,
    and the step sums gradients over the "batch" axis (see make_train_step's axis_name)."""

    axis_name = "batch"
    compiles_ahead = False  # its steps take per-device stacks, not the stand-ins' shapes

    def __init__(self, cfg: Config, init_boxed: Callable, frozen: Slots | None = None):
        _single_process("pmap")
        super().__init__(cfg, init_boxed, frozen)
        self.devices = jax.local_devices()
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
        return self._with_frozen_shapes(_placed(shapes, SingleDeviceSharding(self.devices[0])))

    def _frozen_placement(self) -> dict[str, Any]:
        return dict.fromkeys(self.frozen, SingleDeviceSharding(self.devices[0]))

    def put_frozen(self, names: Iterable[str]) -> dict[str, Any]:
        return self._replicate(super().put_frozen(names))

    def train_step(self, fn: Callable) -> Callable:
        step = jax.pmap(fn, axis_name=self.axis_name, donate_argnums=0, devices=self.devices)

        def call(state, batch):
            state, metrics = step(state, batch)
            return state, _first(metrics)

        return call

    def eval_step(self, fn: Callable) -> Callable:
        return jit_step(fn)  # on the first replica's params (host_state); batches stay on host

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
