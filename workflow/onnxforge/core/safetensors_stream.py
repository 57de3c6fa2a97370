"""Read safetensors checkpoints one tensor at a time.

Our own small reader rather than ``safetensors.safe_open``: numpy has no bfloat16 there, and
we want every failure (truncated file, bad header, missing tensor) to name the file and the
tensor. Only the header and one tensor's bytes are in memory at a time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from onnxforge.core.errors import InputError
from onnxforge.core.finite import find_nonfinite, nonfinite_error

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "C64": np.dtype("<c8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype(np.int8),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
# Valid safetensors dtypes that this reader does not decode (sub-byte or scale-only formats).
UNSUPPORTED_DTYPES = ("F4", "F6_E2M3", "F6_E3M2", "F8_E8M0")
_MAX_HEADER = 100 * 1024 * 1024
_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
_REMEDY = (
    "The file is damaged or was not written by a safetensors library: download it again, "
    "or save it again with safetensors"
)
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def _json_kind(value: object) -> str:
    kinds = {list: "list", dict: "object", str: "string", bool: "boolean", type(None): "null"}
    return f"JSON {kinds.get(type(value), 'number')}"


def _unique_keys(path: Path):
    """``object_pairs_hook`` refusing a key given twice (json keeps the last one silently)."""

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise InputError(
                    f"{path}: tensor {key!r} is defined twice in the header; expected each "
                    f"name once. {_REMEDY}"
                )
            seen[key] = value
        return seen

    return hook


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(path: Path, name: str, entry: object) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """One header entry checked on its own: dtype, shape and data offsets (relative)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise InputError(
            f"{where}: its header entry is a {_json_kind(entry)}; expected an object with "
            f"{', '.join(_ENTRY_KEYS)}. {_REMEDY}"
        )
    for key in _ENTRY_KEYS:
        if key not in entry:
            raise InputError(
                f"{where} has no {key!r} in the header; expected {', '.join(_ENTRY_KEYS)}. "
                f"{_REMEDY}"
            )
    code = entry["dtype"]
    dtype = DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        if code in UNSUPPORTED_DTYPES:
            raise InputError(
                f"{where} has dtype {code!r}, which onnxforge does not read; expected one of "
                f"{sorted(DTYPES)}. Convert the checkpoint (or download it again if this is "
                "not what it should hold)"
            )
        raise InputError(
            f"{where} has unknown dtype {code!r}; expected one of {sorted(DTYPES)}. {_REMEDY}"
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InputError(
            f"{where} has shape {shape!r}; expected a list of non-negative integers. {_REMEDY}"
        )
    offsets = entry["data_offsets"]
    valid = (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(x) for x in offsets)
        and offsets[0] <= offsets[1]
    )
    if not valid:
        raise InputError(
            f"{where} has data_offsets {offsets!r}; expected [begin, end] with "
            f"0 <= begin <= end. {_REMEDY}"
        )
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != nbytes:
        raise InputError(
            f"{where} spans {end - begin} bytes but shape {tuple(shape)} of {code} needs "
            f"{nbytes}. {_REMEDY}"
        )
    return dtype, tuple(shape), begin, end


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check one file's header against the safetensors spec and the file's size;
    no tensor data is read. The spec: a JSON object of entries ``{dtype, shape,
    data_offsets}`` (and an optional ``__metadata__`` of strings), whose data offsets,
    relative to the end of the header, cover the rest of the file exactly: without gaps or
    overlaps, each entry ``prod(shape) x dtype size`` bytes."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise InputError(f"{path}: not a safetensors file (shorter than its 8-byte header)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(_MAX_HEADER, size - 8):
            raise InputError(
                f"{path}: header length {header_len} exceeds the file ({size} bytes); "
                "the file is truncated or not safetensors. Download it again."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys(path))
    except ValueError as err:
        raise InputError(f"{path}: unreadable safetensors header ({err}). {_REMEDY}") from err
    if not isinstance(header, dict):
        raise InputError(
            f"{path}: the header is a {_json_kind(header)}; expected a JSON object "
            f"{{tensor name: {{{', '.join(_ENTRY_KEYS)}}}}}. {_REMEDY}"
        )
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(
            f"{path}: __metadata__ is a {_json_kind(metadata)}; expected a JSON object of "
            f"strings. {_REMEDY}"
        )
    data_start, data_size = 8 + header_len, size - 8 - header_len
    entries = {
        name: _entry(path, name, entry) for name, entry in header.items() if name != "__metadata__"
    }
    tensors, expected, previous = {}, 0, None
    for name, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
        if end > data_size:
            raise InputError(
                f"{path}: tensor {name!r} ends at byte {data_start + end} but the file has "
                f"only {size} bytes: the file is truncated. Download it again."
            )
        if begin > expected:
            between = f"between tensor {previous!r} and" if previous else "before tensor"
            raise InputError(
                f"{path}: data bytes {expected}..{begin} {between} {name!r} belong to no "
                f"tensor; expected data_offsets without gaps. {_REMEDY}"
            )
        if begin < expected:
            before = entries[previous]
            raise InputError(
                f"{path}: tensors {previous!r} (data bytes {before[2]}..{before[3]}) and "
                f"{name!r} (data bytes {begin}..{end}) overlap; expected each tensor to begin "
                f"where the one before it ends. {_REMEDY}"
            )
        tensors[name] = TensorInfo(name, path, dtype, shape, data_start + begin, end - begin)
        expected, previous = end, name
    if expected < data_size:
        last = f"the last tensor {previous!r}" if previous else "the header"
        raise InputError(
            f"{path}: {data_size - expected} bytes after {last} belong to no tensor; expected "
            f"the tensors to end where the file ends. {_REMEDY}"
        )
    return {name: tensors[name] for name in entries}  # in the header's order


def _check_index(directory: Path, tensors: dict[str, TensorInfo]) -> None:
    """``model.safetensors.index.json``, where there is one, agrees with the shards."""
    index = directory / INDEX
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        assert isinstance(weight_map, dict)
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise InputError(
            f"{index}: unreadable index ({type(err).__name__}: {err}); expected a JSON object "
            "with a weight_map of tensor name -> shard file. Download it again"
        ) from err
    for name, shard in weight_map.items():
        if not (directory / str(shard)).is_file():
            raise InputError(
                f"{index}: {INDEX} names {shard} (for tensor {name!r}), which is missing from "
                f"{directory}: the download is incomplete. Download it again"
            )
        found = tensors.get(name)
        if found is not None and found.file.name != shard:
            raise InputError(
                f"{directory}: tensor {name!r} is in {found.file.name} but {INDEX} puts it in "
                f"{shard}; expected the shards the index lists. Remove the stale file or "
                "download the checkpoint again"
            )


def check_shards_indexed(directory: Path) -> None:
    """A Hugging Face checkpoint of several ``*.safetensors`` shards has the index that maps
    each tensor to its shard: transformers (parity's reference) reads shards only through it,
    so shards without one are refused now, naming them, rather than at parity."""
    directory = Path(directory)
    shards = sorted(f.name for f in directory.glob("*.safetensors"))
    if len(shards) > 1 and not (directory / INDEX).is_file():
        listed = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
        raise InputError(
            f"{directory}: {len(shards)} safetensors shards ({listed}) but no {INDEX}; "
            f"expected the index published with the shards (transformers reads shards only "
            "through it). Download the checkpoint again with its index, or save it again with "
            "save_pretrained"
        )


class CheckpointReader:
    """All tensors of a checkpoint directory (one or many ``*.safetensors`` files).

    With ``finite`` (the default), every floating-point value read is checked: a NaN or an
    infinity raises an InputError naming the file, the tensor and the first position."""

    def __init__(self, directory: Path, finite: bool = True):
        self.directory = Path(directory)
        self.finite = finite
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise InputError(
                f"{self.directory}: no *.safetensors files; expected a Hugging Face checkpoint"
            )
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in read_header(file).items():
                if name in self.tensors:
                    raise InputError(
                        f"{self.directory}: tensor {name!r} is defined in both "
                        f"{self.tensors[name].file.name} and {file.name}; expected each tensor "
                        "in one file. Remove the stale file (left from another download?) or "
                        "download the checkpoint again"
                    )
                self.tensors[name] = info
        _check_index(self.directory, self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise InputError(
                f"{self.directory}: tensor {name!r} is missing from the checkpoint "
                f"({len(self.tensors)} tensors present); is the checkpoint complete and of "
                "the right model family?"
            ) from None

    def read(self, name: str) -> np.ndarray:
        """One tensor's values, read from disk now."""
        return self.tensor(name).read()

    def tensor(self, name: str) -> StoredTensor:
        """One tensor, read when (and as far as) it is indexed."""
        return StoredTensor(self.info(name), finite=self.finite)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)


class StoredTensor:
    """A checkpoint tensor read on demand: ``np.asarray(t)`` reads it all, ``t[i]`` or ``t[a:b]``
    (then any further indices) only those rows. Transforms that go row slab by row slab, like
    a transpose, so never hold the whole source next to their result."""

    def __init__(self, info: TensorInfo, finite: bool = True):
        self.info, self.finite = info, finite
        self.shape, self.dtype, self.ndim = info.shape, info.dtype, len(info.shape)

    def read(self) -> np.ndarray:
        return self._rows(0, self.shape[0]) if self.shape else self._read(self.info.offset, ())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.read() if dtype is None else self.read().astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        first, *rest = key if isinstance(key, tuple) else (key,)
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            if step < 1:
                raise IndexError(f"{self.info.name}: rows need a positive step, not {step}")
            value = self._rows(start, max(start, stop))[::step]
        else:
            row = range(self.shape[0])[first]
            value = self._rows(row, row + 1)[0]
        return value[tuple(rest)] if rest else value

    def _rows(self, start: int, stop: int) -> np.ndarray:
        row_bytes = self.info.nbytes // max(1, self.shape[0])
        return self._read(self.info.offset + start * row_bytes, (stop - start, *self.shape[1:]))

    def _read(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, dtype=self.dtype)
        with self.info.file.open("rb") as f:
            f.seek(offset)
            got = f.readinto(out.reshape(-1).view(np.uint8))
        if got != out.nbytes:
            raise InputError(
                f"{self.info.file}: tensor {self.info.name!r} is cut short: the file is truncated"
            )
        if self.finite and (found := find_nonfinite(out)):
            # the position in the whole tensor, not in the rows read
            first = (offset - self.info.offset) // self.dtype.itemsize
            first += int(np.ravel_multi_index(found["index"], shape)) if shape else 0
            found["index"] = [int(i) for i in np.unravel_index(first, self.shape)]
            raise nonfinite_error(f"{self.info.file}: tensor {self.info.name!r}", found, out.size)
        return out
