"""MoE experts as ONNX Runtime's ``com.microsoft.QMoE``: int4 or int8 weights, block-wise.

``quantize_moe_nodes`` rewrites each ``com.microsoft.MoE`` node (``onnxforge.graph.moe``'s
``ort`` lowering) of a model into one ``QMoE`` node with the same routing and activation
attributes; it touches nothing else, so it runs before or after the dense MatMulNBits quantizer.

The packing, established against ONNX Runtime 1.32.0's CPU kernel (``tests/unit/graph/
test_qmoe.py`` holds it to it):

- weights keep the MoE op's float layout, ``fc1 [experts, 2 * inner, d]`` (gate and up rows
  interleaved, ``swiglu_fusion=1``, the only fused form the CPU kernel takes) and ``fc2
  [experts, d, inner]``: ``[experts, N, K]``, K the contraction axis, quantized and packed
  along K. uint8 ``[experts, N, K * bits / 8]``; with 4 bits, value ``2j`` in byte ``j``'s
  low nibble and ``2j + 1`` in its high nibble.
- scales float32 ``[experts, N, K / block_size]`` (block-wise, ``block_size`` attribute a
  power of two >= 16 dividing both d and inner), or ``[experts, N]`` (per channel, no
  ``block_size`` attribute).
- symmetric: no zero-point inputs, so the kernel's default ``2 ** (bits - 1)`` (8, 128):
  ``w = (q - 2 ** (bits - 1)) * scale``, computed in float32 (``dequantize_experts``).
- the scale is the block's largest-magnitude value over ``-2 ** (bits - 1)`` (MLAS's
  symmetric rule, the one ORT's MatMulNBits quantizer uses): that value lands exactly on the
  code 0, and a scale may be negative.

What the CPU kernel computes with them: block-wise int4 and per-channel int4/int8 use float32
activations (``accuracy_level`` 0, the default), so ONNX Runtime's output equals the float MoE
op run with ``dequantize_experts``' weights. Block-wise int8 has no float32 MLAS kernel: ONNX
Runtime 1.32.0 quantizes the activations to int8 at every ``accuracy_level`` (0.5 to 2% off
the dequantized float in our tests), unless ``ORT_QMOE_CPU_QNBIT_GEMM=fp32`` is set before the
session is created (it then dequantizes and runs SGEMM: exact). The CPU kernel does not run
``quant_type`` ``fp4`` (MXFP4): it reads the float8e8m0 scales as float32 and fails ("Tensor
type mismatch").

GPT-OSS's MXFP4 experts come from their blocks, not the float weights
(``families.gpt_oss.mxfp4_qmoe``, through ``quantize_moe_nodes``' ``source``): losslessly at 8
bits, requantized at 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxforge.graph import lowering

BITS = (4, 8)
DEFAULT_BLOCK_SIZE = 32  # as the dense MatMulNBits weights
# MoE input slots: x, router, fc1, fc1_bias, fc2, fc2_bias, fc3, fc3_bias.
_FC1, _FC1_BIAS, _FC2, _FC2_BIAS, _FC3 = 2, 3, 4, 5, 6


def zero_point(bits: int) -> int:
    """The code of 0 (QMoE's default zero point): 8 for int4, 128 for int8."""
    return 1 << (bits - 1)


@dataclass
class QuantizedExperts:
    """One projection's experts as QMoE takes them, with how far each expert moved."""

    weights: np.ndarray  # uint8 [experts, N, K * bits / 8]
    scales: np.ndarray  # float32 [experts, N, K / block_size], or [experts, N] per channel
    bits: int
    block_size: int  # 0: per channel
    max_abs_error: np.ndarray  # [experts]: max |dequantized - source|
    relative_error: np.ndarray  # [experts]: ||dequantized - source|| / ||source||

    @property
    def dequantized_shape(self) -> tuple[int, int, int]:
        count, n, packed = self.weights.shape
        return count, n, packed * 8 // self.bits

    def dequantize(self) -> np.ndarray:
        return dequantize_experts(self.weights, self.scales, self.bits, self.block_size)

    def errors(self) -> dict[str, list[float]]:
        return {
            "max_abs": [float(v) for v in self.max_abs_error],
            "relative": [float(v) for v in self.relative_error],
        }


def check_layout(bits: int, block_size: int, k: int, what: str = "experts") -> None:
    """Refuse, in one line, a bit width or block size QMoE cannot take for contraction size k."""
    if bits not in BITS:
        raise ValueError(f"QMoE {what}: {bits} bits; expected one of {BITS}")
    if block_size and (block_size < 16 or block_size & (block_size - 1)):
        raise ValueError(f"QMoE {what}: block_size {block_size} is not a power of two >= 16")
    if block_size and k % block_size:
        raise ValueError(
            f"QMoE {what}: contraction size {k} is not a multiple of block_size {block_size}; "
            f"choose a block size that divides both the hidden and the expert inner size"
        )
    if k * bits % 8:
        raise ValueError(f"QMoE {what}: {k} values of {bits} bits do not fill whole bytes")


def _group(k: int, block_size: int) -> int:
    return block_size or k


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``[..., K]`` (0 .. 2**bits - 1) -> bytes ``[..., K * bits / 8]``, low nibble first."""
    codes = codes.astype(np.uint8)
    if bits == 8:
        return codes
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """``pack``'s inverse: bytes ``[..., B]`` -> codes ``[..., B * 8 / bits]`` (uint8)."""
    if bits == 8:
        return packed
    codes = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.uint8)
    codes[..., 0::2] = packed & 0x0F
    codes[..., 1::2] = packed >> 4
    return codes


def quantize_matrix(w: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One expert ``[N, K]`` -> (packed ``[N, K * bits / 8]``, scales ``[N, K / block]`` or
    ``[N]``), symmetric, the largest-magnitude value of each block on code 0."""
    n, k = w.shape
    check_layout(bits, block_size, k)
    half = zero_point(bits)
    groups = np.asarray(w, dtype=np.float32).reshape(n, -1, _group(k, block_size))
    peak = np.take_along_axis(groups, np.abs(groups).argmax(axis=-1)[..., None], axis=-1)
    scales = (peak / -half).astype(np.float32)  # [n, blocks, 1]
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
    codes = np.clip(np.rint(groups * inverse) + half, 0, 2 * half - 1).reshape(n, k)
    scales = scales.reshape(n, -1) if block_size else scales.reshape(n)
    return pack(codes, bits), scales


def dequantize_matrix(packed: np.ndarray, scales: np.ndarray, bits: int, block_size: int):
    """One expert's packed codes and scales -> float32 ``[N, K]``, as QMoE computes them."""
    codes = unpack(packed, bits).astype(np.float32) - np.float32(zero_point(bits))
    n, k = codes.shape
    groups = codes.reshape(n, -1, _group(k, block_size))
    return (groups * scales.reshape(n, -1, 1).astype(np.float32)).reshape(n, k)


def dequantize_experts(weights: np.ndarray, scales: np.ndarray, bits: int, block_size: int):
    """QMoE's ``[experts, N, K * bits / 8]`` and scales -> the float32 ``[experts, N, K]`` it
    computes with (the MoE op's float layout): the exact gate's weights."""
    out = np.empty((weights.shape[0], weights.shape[1], weights.shape[2] * 8 // bits), np.float32)
    for e in range(weights.shape[0]):
        out[e] = dequantize_matrix(weights[e], scales[e], bits, block_size)
    return out


def _errors(deq: np.ndarray, source: np.ndarray) -> tuple[float, float]:
    diff = deq - source
    norm = float(np.linalg.norm(source))
    return float(np.abs(diff).max(initial=0.0)), float(np.linalg.norm(diff)) / max(norm, 1e-30)


def assemble(
    count: int, n: int, k: int, bits: int, block_size: int, one: Callable[[int], tuple]
) -> QuantizedExperts:
    """Fill a ``QuantizedExperts`` from ``one(e) -> (packed, scales, source float32)``."""
    scale_shape = (count, n, k // block_size) if block_size else (count, n)
    result = QuantizedExperts(
        weights=np.empty((count, n, k * bits // 8), np.uint8),
        scales=np.empty(scale_shape, np.float32),
        bits=bits,
        block_size=block_size,
        max_abs_error=np.zeros(count, np.float64),
        relative_error=np.zeros(count, np.float64),
    )
    for e in range(count):
        packed, scales, source = one(e)
        result.weights[e], result.scales[e] = packed, scales
        deq = dequantize_matrix(packed, scales, bits, block_size)
        result.max_abs_error[e], result.relative_error[e] = _errors(deq, source)
    return result


def quantize_experts(
    weights, bits: int = 4, block_size: int = DEFAULT_BLOCK_SIZE
) -> QuantizedExperts:
    """Float experts ``[experts, N, K]`` (the MoE op's layout; numpy, a memory map or any
    float dtype) -> QMoE's, one expert at a time (only one expert is ever in float32)."""
    count, n, k = weights.shape
    check_layout(bits, block_size, k)

    def one(e: int):
        source = np.asarray(weights[e], dtype=np.float32)
        return (*quantize_matrix(source, bits, block_size), source)

    return assemble(count, n, k, bits, block_size, one)


def interleave_rows(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``[experts, inner, ...]`` twice -> ``[experts, 2 * inner, ...]``, gate and up rows
    alternating (fc1's order), for packed blocks and their scales as for floats."""
    if gate.shape != up.shape:
        raise ValueError(f"gate {gate.shape} and up {up.shape} differ")
    out = np.empty((gate.shape[0], 2 * gate.shape[1], *gate.shape[2:]), gate.dtype)
    out[:, 0::2], out[:, 1::2] = gate, up
    return out


def qmoe_attributes(
    moe_attributes: dict, bits: int, block_size: int, accuracy_level: int | None = None
) -> dict:
    """The MoE node's attributes plus QMoE's ``expert_weight_bits``, ``block_size`` (absent
    per channel) and, if given, ``accuracy_level`` (4: int8 activations, faster, lossy)."""
    attributes = dict(moe_attributes, expert_weight_bits=bits)
    if block_size:
        attributes["block_size"] = block_size
    if accuracy_level is not None:
        attributes["accuracy_level"] = accuracy_level
    return attributes


# source(node, "fc1" | "fc2") -> the node's experts already in QMoE's form (GPT-OSS's MXFP4
# blocks carried over: ``families.gpt_oss.mxfp4_qmoe``), or None to quantize its float weights.
Source = Callable[[ir.Node, str], QuantizedExperts | None]


def _float_weight(node: ir.Node, index: int, what: str) -> ir.Value:
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None or value.const_value is None:
        raise ValueError(
            f"MoE node {node.name!r}: {what} is not an initializer; fold the weight layouts "
            f"first (onnxforge.graph.passes.fold_constant_layouts)"
        )
    return value


def _check_source(node, what, experts: QuantizedExperts, value, bits, block_size) -> None:
    got = (experts.bits, experts.block_size, *experts.dequantized_shape)
    wanted = (bits, block_size, *value.shape.numpy())
    if got != wanted:
        raise ValueError(
            f"MoE node {node.name!r}: {what}'s given experts are (bits, block_size, experts, N, "
            f"K) {got}, its float weights want {wanted}"
        )


def quantize_moe_nodes(
    model: ir.Model,
    bits: int = 4,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    accuracy_level: int | None = None,
    source: Source | None = None,
) -> dict[str, dict]:
    """Rewrite every ``com.microsoft.MoE`` node into ``QMoE``, in place: its fc1 and fc2
    initializers become packed codes and scales (the float ones are dropped once nothing else
    reads them), biases stay float. Returns, per node, the per-expert error of each projection
    (``QuantizedExperts.errors``), for the report. ``source`` gives a node's experts where they
    come quantized from the checkpoint rather than from its float weights."""
    graph, report = model.graph, {}
    for node in list(graph):
        if node.op_type != "MoE" or node.domain != lowering.CONTRIB_DOMAIN:
            continue
        if len(node.inputs) > _FC3 and node.inputs[_FC3] is not None:
            raise ValueError(
                f"MoE node {node.name!r} has fc3 weights: only fused experts (fc1 holding gate "
                f"and up, swiglu_fusion=1) become QMoE"
            )
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        if attributes.get("activation_type") == "swiglu" and attributes.get("swiglu_fusion") != 1:
            raise ValueError(
                f"MoE node {node.name!r}: swiglu_fusion {attributes.get('swiglu_fusion')}; "
                f"ONNX Runtime's CPU QMoE takes only interleaved gate/up (swiglu_fusion=1)"
            )
        quantized, errors, floats = [], {}, []
        for what, index in (("fc1", _FC1), ("fc2", _FC2)):
            value = _float_weight(node, index, what)
            floats.append(value)
            experts = source(node, what) if source is not None else None
            if experts is not None:
                _check_source(node, what, experts, value, bits, block_size)
            else:
                experts = quantize_experts(value.const_value.numpy(), bits, block_size)
            errors[what] = experts.errors()
            base = value.name or f"{node.name}_{what}"
            weights = ir.Value(name=f"{base}_q{bits}", const_value=ir.tensor(experts.weights))
            scales = ir.Value(name=f"{base}_q{bits}_scales", const_value=ir.tensor(experts.scales))
            for initializer in (weights, scales):
                initializer.shape = initializer.const_value.shape
                initializer.type = ir.TensorType(initializer.const_value.dtype)
                graph.register_initializer(initializer)
            quantized.append((weights, scales))
        (w1, s1), (w2, s2) = quantized
        bias = [node.inputs[i] if i < len(node.inputs) else None for i in (_FC1_BIAS, _FC2_BIAS)]
        inputs = [node.inputs[0], node.inputs[1], w1, s1, bias[0], w2, s2, bias[1]]
        replacement = ir.node(
            "QMoE",
            inputs,
            qmoe_attributes(attributes, bits, block_size, accuracy_level),
            domain=lowering.CONTRIB_DOMAIN,
            name=node.name,
        )
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [replacement], list(node.outputs), list(replacement.outputs)
        )
        for value in floats:
            _drop_if_unused(graph, value)  # before the next node: one layer's floats at a time
        report[node.name or f"QMoE{len(report)}"] = {
            "bits": bits,
            "block_size": block_size,
            **errors,
        }
    return report


def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    if value.name in graph.initializers and value not in graph.inputs and not value.uses():
        graph.initializers.pop(value.name)
