"""Parameter trees on disk (Orbax) and into NNX modules.

A staged checkpoint holds one Orbax checkpoint per parameter, named by the module's state
path (``params/layers.0.attention.q_kernel``): staging writes each tensor as soon as it is
converted, so memory is bounded by the largest tensor, never the model. Loading checks every
path and shape, so a stage that does not fit the model fails loudly instead of exporting zeros.

A parameter may instead be staged packed, as the checkpoint ships it: one Orbax checkpoint
per part, ``<parameter>.<format>_<part>`` (``layers.0.mlp.gate_kernel.mxfp4_blocks`` and
``..._scales``), which ``load_into`` unpacks with the ``Packing`` its caller names for that
format. The stage then copies bytes instead of decoding them, and stays the checkpoint's size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import nnx

from onnxforge.core.errors import InputError
from onnxforge.core.outputs import sha256_file, value_digest

Path_ = tuple[str, ...]


def state_shapes(abstract_model: nnx.Module) -> dict[Path_, tuple[tuple[int, ...], Any]]:
    """Every parameter's path (as strings), shape and dtype, from an abstract module."""
    _, state = nnx.split(abstract_model)
    return {
        tuple(str(p) for p in path): (tuple(var.get_value().shape), var.get_value().dtype)
        for path, var in nnx.to_flat_state(state)
    }


def _name(path: Path_) -> str:
    return ".".join(path)


@dataclass(frozen=True)
class Packing:
    """How a packed parameter is stored and unpacked: one stored array per part, and
    ``unpack(*parts) -> value`` (numpy, the parameter's shape; cast to the load dtype after).
    """

    parts: tuple[str, ...]
    unpack: Callable[..., np.ndarray]


def packed_path(path: Path_, fmt: str, part: str) -> Path_:
    """Where one part of a packed parameter is staged: ``(*path, f"{fmt}_{part}")``."""
    return (*path, f"{fmt}_{part}")


def _stored_as(
    name: str, stored: set[str], packings: Mapping[str, Packing]
) -> tuple[Packing | None, tuple[str, ...]] | None:
    """How parameter ``name`` is stored: plain (no packing, itself) or as every part of one
    packing; None when neither is there."""
    if name in stored:
        return None, (name,)
    for fmt, packing in packings.items():
        parts = tuple(_name(packed_path((name,), fmt, part)) for part in packing.parts)
        if all(part in stored for part in parts):
            return packing, parts
    return None


class _StagingNumpyHandler(ocp.type_handlers.NumpyHandler):
    """Orbax's numpy handler, cut to what staging needs.

    - No deep copy of each array (made so that the caller may change it while an
      asynchronous save runs): nothing changes an array once queued, and the copy doubled
      peak memory.
    - No fsync of the array data: a stage is a cache, rebuilt from the checkpoint if a crash
      loses it, and syncing made a 1 GiB write five times slower (Orbax still syncs its
      metadata).
    """

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.type_handlers.SaveArgs()] * len(values)
        return [
            ocp.future.CommitFutureAwaitingContractedSignals(
                self._background_serialize(list(values), infos, args), name="np_type_handler"
            )
        ]

    async def _open_and_write(self, value, tspec, ts_context):
        context = ts.Context({"file_io_sync": False}, parent=ts_context)
        await super()._open_and_write(value, tspec, context)


# Orbax's step metadata holds when the save began and ended; nothing reads them back, and
# they are all that kept two saves of the same array from being the same bytes.
_SAVE_TIMES = ("init_timestamp_nsecs", "commit_timestamp_nsecs")


def _checkpointer() -> ocp.PyTreeCheckpointer:
    """Orbax's checkpointer as staging saves with it: one zarr array per parameter, without
    OCDBT, whose data files get random names (``d/<random hex>``) at every save; zarr names
    its chunk files by position (``value/0.0``), so a save is the same bytes every time."""
    return ocp.PyTreeCheckpointer(use_ocdbt=False, use_compression=False)


def _drop_save_times(checkpoint: Path) -> None:
    """Clear the save's timestamps from Orbax's ``_CHECKPOINT_METADATA`` (Orbax reads the
    file with them absent: they are optional)."""
    path = Path(checkpoint) / "_CHECKPOINT_METADATA"
    if not path.exists():
        return
    metadata = json.loads(path.read_text())
    metadata.update(dict.fromkeys(_SAVE_TIMES), performance_metrics={})
    path.write_text(json.dumps(metadata))


def save_array(target: Path, value: np.ndarray) -> None:
    """One parameter as its own Orbax checkpoint at ``target``, byte-identical every time."""
    with _checkpointer() as checkpointer:
        checkpointer.save(Path(target).absolute(), {"value": value})
    _drop_save_times(target)


class StreamingWriter:
    """Write parameters one at a time on a background thread, and hash them and their files.

    While one parameter is written the caller makes the next; a parameter larger than
    ``overlap_bytes`` is written before ``write`` returns, so peak memory stays below the
    largest parameter plus ``overlap_bytes``. Each parameter's files are hashed right after
    they are written, while still in the page cache, for the step's manifest, and so are its
    values (``values``: dtype, shape and the sha256 of its bytes; independent of how Orbax
    lays them out on disk).

    Uncompressed, so tensorstore writes straight from the array: zstd doubled the write time
    and held a compressed copy (0.8 GiB for a vocabulary-sized matrix) next to the array. The
    price is some disk (bfloat16 weights compress a little, packed MXFP4 bytes hardly).
    Loading needs no option: each array's zarr metadata names its compressor. Without OCDBT
    and with the save times cleared, two stages of the same checkpoint are the same bytes
    (``_checkpointer``).
    """

    def __init__(self, directory: Path, overlap_bytes: int = 512 << 20):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.overlap_bytes = overlap_bytes
        self.hashes: dict[str, str] = {}  # sha256 by path relative to ``directory``
        self.values: dict[str, dict[str, Any]] = {}  # value_digest by parameter name
        ocp.type_handlers.register_type_handler(np.ndarray, _StagingNumpyHandler(), override=True)
        self._checkpointer = _checkpointer()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="StreamingWriter")
        self._pending: Future | None = None

    def write(self, path: Path_, value: np.ndarray) -> None:
        self.wait()
        self._pending = self._thread.submit(self._save, self.directory / _name(path), value)
        if value.nbytes > self.overlap_bytes:
            self.wait()

    def wait(self) -> None:
        """Until every queued parameter is written; raises what writing raised."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _save(self, target: Path, value: np.ndarray) -> None:
        self._checkpointer.save(target, {"value": value})
        _drop_save_times(target)
        self.values[target.name] = value_digest(value)
        for file in sorted(target.rglob("*")):
            if file.is_file():
                self.hashes[str(file.relative_to(self.directory))] = sha256_file(file)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._thread.shutdown()
            self._checkpointer.close()

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_into(
    abstract_model: nnx.Module,
    directory: Path,
    dtype: Any,
    packings: Mapping[str, Packing] | None = None,
) -> nnx.Module:
    """A concrete module whose parameters come from the Orbax checkpoint, cast to ``dtype``.

    A parameter staged packed in one of ``packings``' formats is unpacked here, one
    parameter at a time: memory holds its parts and its value, never the model twice.
    """
    directory = Path(directory).absolute()
    packings = dict(packings or {})
    if not directory.exists():
        raise InputError(f"{directory}: staged parameters not found; run the stage step first")
    graphdef, state = nnx.split(abstract_model)
    flat_state = nnx.to_flat_state(state)
    stored = {p.name for p in directory.iterdir() if p.is_dir()}
    sources = {}
    for path, _ in flat_state:
        name = _name(tuple(str(p) for p in path))
        sources[name] = _stored_as(name, stored, packings)
    missing = sorted(name for name, parts in sources.items() if parts is None)
    used = {part for source in sources.values() if source for part in source[1]}
    extra = sorted(stored - used)
    if missing or extra:
        raise InputError(
            f"{directory}: staged parameters do not fit the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}. Re-run stage."
        )
    leaves = []
    with ocp.PyTreeCheckpointer() as checkpointer:
        for path, var in flat_state:
            name = _name(tuple(str(p) for p in path))
            packing, stored_names = sources[name]
            parts = [checkpointer.restore(directory / part)["value"] for part in stored_names]
            if packing is None:
                (value,) = parts
            else:
                try:
                    value = packing.unpack(*(np.asarray(part) for part in parts))
                except ValueError as err:  # parts that do not pair up
                    raise InputError(f"{directory}: {list(stored_names)}: {err}") from err
            del parts
            if tuple(value.shape) != tuple(var.get_value().shape):
                raise InputError(
                    f"{directory}: parameter {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(var.get_value().shape)}. Re-run stage."
                )
            leaves.append((path, var.replace(jnp.asarray(value, dtype=dtype))))
            del value
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def rescale(parameter_dir: Path, factor: float, index: int | None = None) -> None:
    """Multiply one staged parameter (or its slice ``index`` of the first axis: one expert)
    by ``factor`` in place (tests: prove a gate bites)."""
    parameter_dir = Path(parameter_dir).absolute()
    with ocp.PyTreeCheckpointer() as checkpointer:
        value = np.asarray(checkpointer.restore(parameter_dir)["value"])
    if value.dtype.kind in "biu":
        raise ValueError(f"{parameter_dir}: {value.dtype} is a packed part, not a value to scale")
    scaled = value.astype(np.float32)
    if index is None:
        scaled *= factor
    else:
        scaled[index] *= factor
    scaled = scaled.astype(value.dtype)
    tmp = parameter_dir.with_name(parameter_dir.name + ".rescaled")
    save_array(tmp, scaled)
    shutil.rmtree(parameter_dir)
    tmp.rename(parameter_dir)
