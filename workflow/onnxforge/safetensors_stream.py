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

from onnxforge.errors import InputError

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check one file's header against its size; no tensor data is read."""
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
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            raise InputError(f"{path}: unreadable safetensors header ({err})") from err
    data_start = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise InputError(
                f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}"
            )
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != nbytes:
            raise InputError(
                f"{path}: tensor {name!r} spans {end - begin} bytes but shape {shape} "
                f"of {entry['dtype']} needs {nbytes}"
            )
        if data_start + end > size:
            raise InputError(
                f"{path}: tensor {name!r} ends at byte {data_start + end} but the file has "
                f"only {size} bytes: the file is truncated. Download it again."
            )
        tensors[name] = TensorInfo(name, path, dtype, shape, data_start + begin, nbytes)
    return tensors


class CheckpointReader:
    """All tensors of a checkpoint directory (one or many ``*.safetensors`` files)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise InputError(
                f"{self.directory}: no *.safetensors files; expected a Hugging Face checkpoint"
            )
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            self.tensors.update(read_header(file))

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
        return StoredTensor(self.info(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)


class StoredTensor:
    """A checkpoint tensor read on demand: ``np.asarray(t)`` reads it all, ``t[i]`` or ``t[a:b]``
    (then any further indices) only those rows. Transforms that go row slab by row slab, like
    a transpose, so never hold the whole source next to their result."""

    def __init__(self, info: TensorInfo):
        self.info = info
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
        return out
