"""Device meshes and the one table mapping the model's logical axis names to mesh axes.

Layers name logical axes only ("batch", "embed", "heads", ...). `RULES` maps them onto five
mesh axes, outermost first:

    data      pure data parallelism: params replicated, batch split
    fsdp      data parallelism with params, gradients and optimizer state split on `embed`
    expert    expert parallelism: a mixture of experts' expert weights split on `expert`;
              everything else is data parallel over it (the batch splits over it too)
    sequence  activations split along the sequence (attention gathers keys and values)
    tensor    Megatron-style tensor parallelism over heads, MLP width and vocabulary

Rules are tried in order and a mesh axis is used at most once per array, so an activation
(batch, length, embed) is split over data x fsdp on batch and keeps embed whole, while a kernel
(embed, heads, head_dim) is split over fsdp on embed and tensor on heads.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "sequence", "tensor")

RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("expert", "expert"),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
)

# Which config field sets each logical dimension: named in divisibility errors.
_FIX_HINTS = {
    "batch": "data.batch_size (per micro-batch: data.batch_size / train.grad_accum)",
    "length": "data.seq_len",
    "embed": "model.d_model",
    "heads": "model.n_heads",
    "kv_heads": "model.n_kv_heads",
    "mlp": "model.d_ff",
    "expert": "model.moe.n_experts",
    "vocab": "model.vocab_multiple (pad the vocabulary to a multiple of the axis size)",
}


class MeshError(ValueError):
    """A mesh that does not fit the devices or does not divide the arrays it shards."""


def parse_mesh(spec: str) -> dict[str, int]:
    """ "data=2,fsdp=2,tensor=2" -> {"data": 2, "fsdp": 2, "expert": 1, "sequence": 1,
    "tensor": 2}.

    One axis may be -1: it takes the devices the others leave. Unnamed axes have size 1.
    """
    shape = dict.fromkeys(MESH_AXES, 1)
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, size = part.partition("=")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise MeshError(
                f"bad mesh entry {part!r} in {spec!r}: expected AXIS=SIZE with AXIS one of "
                f"{', '.join(MESH_AXES)}, e.g. 'data=2,fsdp=2,tensor=2'"
            )
        if name in seen:
            raise MeshError(f"mesh axis {name!r} is given twice in {spec!r}")
        try:
            value = int(size)
        except ValueError:
            raise MeshError(f"mesh axis {name}={size!r} is not an integer") from None
        if value == 0 or value < -1:
            raise MeshError(f"mesh axis {name}={value} must be a positive size (or -1: the rest)")
        seen.add(name)
        shape[name] = value
    if list(shape.values()).count(-1) > 1:
        raise MeshError(f"at most one mesh axis may be -1 in {spec!r}")
    return shape


def resolve_mesh_shape(shape: dict[str, int], n_devices: int) -> dict[str, int]:
    """Fills in a -1 axis and checks that the mesh uses exactly `n_devices` devices."""
    fixed = math.prod(v for v in shape.values() if v != -1)
    described = " x ".join(f"{k}={v}" for k, v in shape.items() if v != 1) or "1 device"
    if -1 in shape.values():
        if n_devices % fixed:
            raise MeshError(
                f"mesh {described}: the fixed axes use {fixed} devices, which does not divide the "
                f"{n_devices} available"
            )
        shape = {k: (n_devices // fixed if v == -1 else v) for k, v in shape.items()}
    elif fixed != n_devices:
        raise MeshError(
            f"mesh {described} has {fixed} devices but {n_devices} are available; make the axis "
            f"sizes multiply to {n_devices} (or set one axis to -1 to take the rest)"
        )
    return shape


def make_mesh(spec: str | dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices with Auto axis types, as linen's constraints need.

    (`jax.make_mesh` defaults to Explicit axes, under which logical constraints fail.)
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = parse_mesh(spec) if isinstance(spec, str) else {**dict.fromkeys(MESH_AXES, 1), **spec}
    shape = resolve_mesh_shape(shape, len(devices))
    sizes = tuple(shape[a] for a in MESH_AXES)
    return jax.make_mesh(
        sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


@contextlib.contextmanager
def use_mesh(mesh: Mesh) -> Iterator[Mesh]:
    """Activates `mesh` and `RULES` for tracing: linen's logical constraints then apply.

    (`with mesh:` is deprecated and silently disables them in flax 0.12.)
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield mesh


def logical_to_mesh(spec: PartitionSpec | Sequence[str | None]) -> PartitionSpec:
    """The mesh PartitionSpec of one array with the given logical axis names."""
    return nn.logical_to_mesh_axes(tuple(spec), RULES)


def logical_shardings(logical_specs: Any, mesh: Mesh) -> Any:
    """A tree of logical PartitionSpecs -> the same tree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, RULES)


def batch_spec(ndim: int = 2) -> PartitionSpec:
    """Batch arrays [B, T, ...] are split on batch (data x fsdp x expert) and length (sequence); [B]
    arrays (one value per example) on batch."""
    return logical_to_mesh((("batch", "length") + (None,) * max(ndim - 2, 0))[:ndim])


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(ndim))


def axis_size(mesh: Mesh, axes: Any) -> int:
    """Devices a PartitionSpec entry (None, a name or a tuple of names) splits over."""
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[n] for n in names)


def check_divisible(
    shapes: Any, logical_specs: Any, mesh: Mesh, *, what: str = "parameter"
) -> None:
    """Raises MeshError naming the first array dimension its mesh axes do not divide."""
    flat_specs = dict(
        jax.tree_util.tree_leaves_with_path(
            logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
        )
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        names = flat_specs.get(path)
        if names is None:
            continue
        mesh_axes = logical_to_mesh(names)
        for dim, (logical, axes) in enumerate(zip(names, mesh_axes, strict=False)):
            size = axis_size(mesh, axes)
            if leaf.shape[dim] % size:
                axes_text = " x ".join(
                    f"{a}={mesh.shape[a]}" for a in ((axes,) if isinstance(axes, str) else axes)
                )
                hint = _FIX_HINTS.get(logical, "the model shape")
                raise MeshError(
                    f"the mesh cannot split {what} {jax.tree_util.keystr(path)} of shape "
                    f"{tuple(leaf.shape)}: its {logical!r} dimension ({leaf.shape[dim]}) is not "
                    f"divisible by mesh axis {axes_text}. Change {hint}, or use a mesh whose "
                    f"{axes_text.split('=')[0]} axis divides {leaf.shape[dim]}"
                )


def check_batch_split(batch_size: int, grad_accum: int, shards: int, where: str) -> None:
    """Every micro-batch must split evenly over the `shards` devices that share the batch."""
    if batch_size % grad_accum:
        raise MeshError(
            f"data.batch_size={batch_size} is not divisible by train.grad_accum={grad_accum}"
        )
    micro = batch_size // grad_accum
    if micro % shards:
        raise MeshError(
            f"the batch axis cannot be split: each micro-batch has {micro} sequences "
            f"(data.batch_size={batch_size} / train.grad_accum={grad_accum}) but {where} "
            f"splits the batch over {shards} devices; make data.batch_size a multiple of "
            f"{shards * grad_accum}"
        )


def check_batch(batch_size: int, seq_len: int, grad_accum: int, mesh: Mesh) -> None:
    """Batches split over data x fsdp x expert on batch, and over sequence on length."""
    spec = batch_spec()
    check_batch_split(
        batch_size, grad_accum, axis_size(mesh, spec[0]), "the mesh (data x fsdp x expert)"
    )
    seq_shards = axis_size(mesh, spec[1])
    if seq_len % seq_shards:
        raise MeshError(
            f"the length axis cannot be split: seq_len={seq_len} is not divisible by mesh "
            f"axis sequence={seq_shards}"
        )


def device_bytes(tree: Any) -> dict[jax.Device, int]:
    """Bytes of a tree of jax.Arrays that each (addressable) device holds."""
    held: dict[jax.Device, int] = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held


def shard_bytes(tree: Any) -> tuple[int, int]:
    """(the most bytes any one device holds, bytes of the whole arrays) of a tree of jax.Arrays."""
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    return max(device_bytes(tree).values(), default=0), total


__all__ = [
    "MESH_AXES",
    "RULES",
    "MeshError",
    "axis_size",
    "batch_sharding",
    "batch_spec",
    "check_batch",
    "check_batch_split",
    "check_divisible",
    "device_bytes",
    "logical_shardings",
    "logical_to_mesh",
    "make_mesh",
    "parse_mesh",
    "resolve_mesh_shape",
    "shard_bytes",
    "use_mesh",
]
