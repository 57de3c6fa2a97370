"""Quantized weights read back in float32, and put into the JAX parameters they came from.

``dequantized_weights`` reads a quantized graph's weights (``MatMulNBits``, a weight's
``DequantizeLinear``, ``GatherBlockQuantized``) as ONNX Runtime's kernels interpret them;
``params_with_dequantized`` puts them into the JAX parameter leaves that made each one,
matched by exact float32 values: the exactness gate runs the family's JAX model on the very
weights the graph holds, so ONNX Runtime (at accuracy level 1) must agree to float rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxforge.core.errors import InputError
from onnxforge.core.paths import ONNX_FILE
from onnxforge.graph.passes import constant_array

CONTRIB = "com.microsoft"
WEIGHT_KEY = "onnxforge.quantized_from"  # node metadata: the float initializer it replaced
_STANDARD = ("", "ai.onnx")


def dequantized_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """Every quantized weight of ``model_dir``'s graph in float32, by the name of the float
    initializer it replaced (``WEIGHT_KEY``; else the node's or data's name): a MatMul's as
    ``[K, N]`` (MatMulNBits, or DequantizeLinear feeding a MatMul), an embedding as
    ``[vocab, hidden]`` (GatherBlockQuantized)."""
    model = ir.load(Path(model_dir) / ONNX_FILE)
    weights: dict[str, np.ndarray] = {}
    for node in model.graph:
        source = node.metadata_props.get(WEIGHT_KEY)
        if node.op_type == "MatMulNBits" and node.domain == CONTRIB:
            if len(node.inputs) > 4 and node.inputs[4] is not None:
                raise NotImplementedError(f"{node.name}: g_idx (deprecated) is not read")
            parts = [constant_array(v) if v is not None else None for v in node.inputs[1:4]]
            parts += [None] * (3 - len(parts))
            attrs = {a: node.attributes.get_int(a) for a in ("K", "N", "bits", "block_size")}
            weights[source or node.name] = _nbits_weight(*parts, attrs)
        elif node.op_type == "DequantizeLinear" and node.domain in _STANDARD:
            feeds = [(user.op_type, index) for user, index in node.outputs[0].uses()]
            if ("MatMul", 1) in feeds and node.inputs[0].is_initializer():  # a weight
                weights[source or node.inputs[0].name] = _dequantize_linear(node)
        elif node.op_type == "GatherBlockQuantized" and node.domain == CONTRIB:
            weights[source or node.inputs[0].name] = _gather_table(node)
    return weights


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 ``[..., bytes]`` -> its ``bits``-wide values, lowest bits first."""
    if bits == 8:
        return packed
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)


def nbits_parts(b, scales, zero, attrs: dict):
    """MatMulNBits' tensors -> q ``[N, K]``, scales and zero points ``[N, blocks]`` (zero None:
    the default), as its kernels read them."""

    def array(x):
        return None if x is None else x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    b, scales, zero = array(b), array(scales), array(zero)
    k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    blocks = -(-k // block)
    q = _unpack(b.reshape(n, -1), bits)[:, :k]
    scales = scales.reshape(n, blocks)
    if zero is not None:
        zero = _unpack(zero.reshape(n, -1), bits)[:, :blocks] if zero.dtype == np.uint8 else zero
        zero = zero.reshape(n, blocks)
    return q, scales, zero


def _nbits_weight(b, scales, zero, attrs: dict) -> np.ndarray:
    q, scales, zero = nbits_parts(b, scales, zero, attrs)
    k, bits, block = attrs["K"], attrs["bits"], attrs["block_size"]
    zero = np.float32(1 << (bits - 1)) if zero is None else _blocks(zero, block, k, 1)
    weight = (q.astype(np.float32) - zero) * _blocks(scales, block, k, 1)
    return np.ascontiguousarray(weight.T)


def _blocks(per_block: np.ndarray, block: int, length: int, axis: int) -> np.ndarray:
    """A per-block tensor repeated over its blocks' elements along ``axis`` (cut at length)."""
    expanded = np.repeat(per_block.astype(np.float32), block, axis=axis)
    return np.take(expanded, np.arange(length), axis=axis)


def _dequantize_linear(node: ir.Node) -> np.ndarray:
    """(x - zero_point) * scale, blocked along ``axis`` (ONNX's DequantizeLinear)."""
    x = constant_array(node.inputs[0]).astype(np.float32)
    scale = constant_array(node.inputs[1])
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    zero = np.float32(0) if zero is None else constant_array(zero).astype(np.float32)
    axis = node.attributes.get_int("axis", 1) % x.ndim
    block = node.attributes.get_int("block_size", 0)
    if block:
        scale = _blocks(scale, block, x.shape[axis], axis)
        if np.ndim(zero):
            zero = _blocks(zero, block, x.shape[axis], axis)
    elif np.ndim(scale):
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) else zero
    return ((x - zero) * scale.astype(np.float32)).astype(np.float32)


def _gather_table(node: ir.Node) -> np.ndarray:
    """GatherBlockQuantized's whole table, dequantized (int4/uint4, or packed uint8 + bits)."""
    data = constant_array(node.inputs[0])
    scales = constant_array(node.inputs[2])
    zero = node.inputs[3] if len(node.inputs) > 3 else None
    zero = None if zero is None else constant_array(zero)
    block = node.attributes.get_int("block_size", 128)
    axis = node.attributes.get_int("quantize_axis", 1) % data.ndim
    if data.ndim != 2 or axis != 1:
        raise NotImplementedError(f"{node.name}: only [vocab, hidden] tables blocked on hidden")
    if data.dtype == np.uint8:
        bits = node.attributes.get_int("bits", 4)
        data = _unpack(data, bits)
        zero = np.uint8(1 << (bits - 1)) if zero is None else _unpack(zero, bits)
    zero = np.float32(0) if zero is None else zero
    hidden = data.shape[1]
    if np.ndim(zero):
        zero = _blocks(zero[:, : scales.shape[1]], block, hidden, 1)
    table = (data.astype(np.float32) - zero) * _blocks(scales, block, hidden, 1)
    return table.astype(np.float32)


def float_initializers(
    model_dir: Path, names: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """The initializers (``names``, or every one) of ``model_dir``'s graph, memory-mapped:
    ``params_with_dequantized``'s ``f32_initializers``, from the float export."""
    graph = ir.load(Path(model_dir) / ONNX_FILE).graph
    names = list(graph.initializers) if names is None else names
    missing = sorted(set(names) - set(graph.initializers))
    if missing:
        raise InputError(f"{Path(model_dir) / ONNX_FILE}: no initializer {missing[0]!r}")
    return {name: graph.initializers[name].const_value.numpy() for name in names}


# Into the JAX parameters: each quantized weight's values back into the leaves that made it.


def params_with_dequantized(
    params_leaves: Mapping[object, np.ndarray],
    f32_initializers: Mapping[str, np.ndarray],
    dequantized: Mapping[str, np.ndarray],
) -> dict[object, np.ndarray]:
    """``params_leaves`` with each leaf that a quantized initializer was made of replaced by
    its dequantized values (float32), matched by exact float32 values: the initializer
    (``f32_initializers[name]``, ``[K, N]``) is the leaves' columns side by side, each leaf
    transposed and reshaped to ``[K, n_i]`` (a plain weight, a transposed one, fused q/k/v, a
    tied embedding). Refuses, naming it, a weight no leaves make, a leaf two weights make
    differently, or a leaf also held float elsewhere (tied weights quantized on one side)."""
    leaves = {path: np.asarray(leaf) for path, leaf in params_leaves.items()}
    by_first: dict[float, list] = {}
    for path, leaf in leaves.items():
        if leaf.ndim >= 2 and leaf.size:
            by_first.setdefault(float(leaf.flat[0]), []).append(path)
    for paths in by_first.values():
        paths.sort(key=lambda p: -leaves[p].size)  # a whole fused block before a part of it
    replaced: dict[object, tuple[np.ndarray, str]] = {}
    for name, values in dequantized.items():
        if name not in f32_initializers:
            raise InputError(f"quantized weight {name!r}: not among the float initializers")
        weight = np.asarray(f32_initializers[name], np.float32)
        values = np.asarray(values, np.float32)
        if weight.ndim != 2 or weight.shape != values.shape:
            raise InputError(
                f"quantized weight {name!r}: float {list(weight.shape)}, "
                f"dequantized {list(values.shape)}"
            )
        column = 0
        while column < weight.shape[1]:
            found = _leaf_at(weight, column, by_first.get(float(weight[0, column]), ()), leaves)
            if found is None:
                raise InputError(
                    f"quantized weight {name!r} {list(weight.shape)}: its columns from {column} "
                    "are no parameter leaf (as [K, n] after a transpose and reshape)"
                )
            path, perm, width = found
            shape = [leaves[path].shape[axis] for axis in perm]
            block = values[:, column : column + width].reshape(shape)
            leaf_values = np.ascontiguousarray(block.transpose(np.argsort(perm)))
            earlier = replaced.get(path)
            if earlier is not None and not np.array_equal(earlier[0], leaf_values):
                raise InputError(
                    f"parameter {path}: quantized differently in {earlier[1]!r} and {name!r} "
                    "(tied weights): quantize both the same way, or neither"
                )
            replaced[path] = (leaf_values, name)
            column += width
    for path, (leaf_values, name) in replaced.items():
        leaf = leaves[path].astype(np.float32)
        if np.array_equal(leaf, leaf_values):
            continue
        for other, array in f32_initializers.items():
            array = np.asarray(array)
            if other in dequantized or array.ndim != 2 or array.size != leaf.size:
                continue
            if array.flat[0] == leaf.flat[0] and _leaf_at(
                array.astype(np.float32), 0, [path], leaves
            ):
                raise InputError(
                    f"parameter {path}: quantized in {name!r} but float in {other!r} (tied "
                    "weights): quantize the embedding too (embeddings), or keep the LM head float"
                )
    return {path: replaced[path][0] if path in replaced else leaf for path, leaf in leaves.items()}


def _layouts(shape: tuple[int, ...], rows: int):
    """The axis orders of a leaf that flatten to ``rows`` rows (identity first)."""
    for perm in itertools.permutations(range(len(shape))):
        for split in range(1, len(shape)):
            if int(np.prod([shape[a] for a in perm[:split]])) == rows:
                yield perm
                break


def _leaf_at(weight: np.ndarray, column: int, candidates, leaves) -> tuple | None:
    """The leaf (path, axis order, width) whose ``[K, n]`` layout is ``weight``'s columns from
    ``column``, else None."""
    rows, free = weight.shape[0], weight.shape[1] - column
    for path in candidates:
        leaf = leaves[path]
        width = leaf.size // rows
        if leaf.size % rows or width > free:
            continue
        block = weight[:, column : column + width]
        for perm in _layouts(leaf.shape, rows):
            laid_out = leaf.transpose(perm).reshape(rows, width)
            if np.array_equal(laid_out.astype(np.float32), block):
                return path, perm, width
    return None


# A quantized export against the float export it was made from (the exactness gate's input).


def graph_weights(
    export_dir: Path, base_dir: Path
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Each float weight of the float export ``base_dir`` with, where the quantized export
    ``export_dir`` holds it quantized, the values it computes with: ``{name: (float,
    dequantized or None)}``, what ``params_with_dequantized`` takes. A QMoE node's experts
    come as three weights (``expert_weights``)."""
    floats = float_initializers(base_dir)
    dequantized = dequantized_weights(export_dir)
    weights = {name: (array, dequantized.get(name)) for name, array in floats.items()}
    weights |= expert_weights(export_dir, base_dir)
    return weights


def expert_weights(export_dir: Path, base_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per ``QMoE`` node of ``export_dir`` its experts' gate, up and down kernels, float (the
    ``MoE`` node of that name in ``base_dir``) and dequantized, each laid out as the JAX
    kernels' ``[experts * K, N]`` (``[experts, K, N]`` reshaped): fc1 ``[E, 2I, d]`` holds gate
    and up interleaved by rows, fc2 is ``[E, d, I]`` (``graph.moe``'s layouts)."""
    from onnxforge.graph import qmoe

    quantized = ir.load(Path(export_dir) / ONNX_FILE).graph
    base = {n.name: n for n in ir.load(Path(base_dir) / ONNX_FILE).graph if n.op_type == "MoE"}
    weights = {}
    for node in quantized:
        if node.op_type != "QMoE" or node.domain != CONTRIB:
            continue
        if node.name not in base:
            raise InputError(f"{base_dir}: no MoE node {node.name!r} for the export's QMoE")
        bits = node.attributes.get_int("expert_weight_bits")
        block = node.attributes.get_int("block_size", 0)
        fc1, fc2 = (
            qmoe.dequantize_experts(
                constant_array(node.inputs[i]), constant_array(node.inputs[i + 1]), bits, block
            )
            for i in (2, 5)
        )
        float_fc1, float_fc2 = (constant_array(base[node.name].inputs[i]) for i in (2, 4))
        for label, (floats, values) in {
            "gate": (float_fc1[:, 0::2], fc1[:, 0::2]),
            "up": (float_fc1[:, 1::2], fc1[:, 1::2]),
            "down": (float_fc2, fc2),
        }.items():
            weights[f"{node.name}.{label}"] = tuple(  # [E, N, K] -> [E * K, N]
                np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(-1, w.shape[1])
                for w in (np.asarray(floats, np.float32), values)
            )
    return weights


def gathered_tables(export_dir: Path) -> set[str]:
    """The weights ``dequantized_weights`` reads from a ``GatherBlockQuantized`` (embedding
    tables ``[vocab, hidden]``, in blocks along hidden; a MatMul's ``[K, N]`` is in blocks
    along K)."""
    graph = ir.load(Path(export_dir) / ONNX_FILE).graph
    return {
        node.metadata_props.get(WEIGHT_KEY) or node.inputs[0].name
        for node in graph
        if node.op_type == "GatherBlockQuantized" and node.domain == CONTRIB
    }


def block_errors(
    floats: np.ndarray, values: np.ndarray, block_size: int, axis: int = 0
) -> np.ndarray:
    """Per block of ``block_size`` along ``axis``: the largest ``|values - floats|`` over the
    block's largest ``|floats|`` (0 for an all-zero block): how far a dequantized weight is
    from the float one it replaced, in units of its block."""
    floats = np.moveaxis(np.asarray(floats, np.float32), axis, 0)
    values = np.moveaxis(np.asarray(values, np.float32), axis, 0)
    length = floats.shape[0]
    pad = -length % block_size
    if pad:
        floats = np.pad(floats, [(0, pad)] + [(0, 0)] * (floats.ndim - 1))
        values = np.pad(values, [(0, pad)] + [(0, 0)] * (values.ndim - 1))
    shape = (-1, block_size, *floats.shape[1:])
    error = np.abs(values - floats).reshape(shape).max(axis=1)
    scale = np.abs(floats).reshape(shape).max(axis=1)
    return np.divide(error, scale, out=np.zeros_like(error), where=scale > 0)
