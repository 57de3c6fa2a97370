"""MXFP4, the 4-bit format of GPT-OSS's expert weights.

Each block of 32 values is 16 bytes of FP4 codes (two per byte, low nibble first) and one
uint8 power-of-two scale biased by 127. ``dequantize`` is checked against transformers'
``convert_moe_packed_tensors`` on the same bytes; ``quantize`` writes test checkpoints.

A stage keeps expert kernels packed, as the checkpoint ships them (``packed_shapes``: blocks
and scales ``[e, out, ...]``); loading the stage decodes them (``decode_experts``) into the
model's ``[e, in, out]`` kernels.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np

from onnxforge.core import threads

FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)
BLOCK = 32
FORMAT = "mxfp4"  # a packed kernel is staged as <kernel>.mxfp4_blocks and <kernel>.mxfp4_scales
PARTS = ("blocks", "scales")


def dequantize(blocks: np.ndarray, scales: np.ndarray, dtype=ml_dtypes.bfloat16) -> np.ndarray:
    """``blocks [..., G, 16]`` uint8 and ``scales [..., G]`` uint8 -> values ``[..., G * 32]``.

    Works row-chunk by row-chunk so the float32 temporaries stay small next to the output.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {blocks.shape} do not match scales {scales.shape}")
    *prefix, groups, _ = blocks.shape
    flat_blocks = blocks.reshape(-1, BLOCK // 2)
    flat_scales = scales.reshape(-1).astype(np.int32) - 127
    out = np.empty((flat_blocks.shape[0], BLOCK), dtype=dtype)
    step = 1 << 16
    for start in range(0, flat_blocks.shape[0], step):
        chunk = flat_blocks[start : start + step]
        values = np.empty((chunk.shape[0], BLOCK), dtype=np.float32)
        values[:, 0::2] = FP4_VALUES[chunk & 0x0F]
        values[:, 1::2] = FP4_VALUES[chunk >> 4]
        out[start : start + step] = np.ldexp(values, flat_scales[start : start + step, None])
    return out.reshape(*prefix, groups * BLOCK)


def _pair_tables(dtype=ml_dtypes.bfloat16) -> tuple[np.ndarray, np.ndarray]:
    """Bits of the low and high nibble's value for every ``scale << 8 | byte``, computed as
    ``dequantize`` does, so a lookup gives the same bits."""
    codes, exponents = np.arange(256), np.arange(256, dtype=np.int32)[:, None] - 127
    with np.errstate(over="ignore"):  # scales past bfloat16's range give inf, as in dequantize
        lo = np.ldexp(FP4_VALUES[codes & 0x0F][None, :], exponents).astype(dtype)
        hi = np.ldexp(FP4_VALUES[codes >> 4][None, :], exponents).astype(dtype)
    return lo.view(np.uint16).ravel(), hi.view(np.uint16).ravel()


_LOW, _HIGH = _pair_tables()


def dequantize_transposed(blocks: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:
    """``dequantize(blocks, scales).T`` into ``out`` (bfloat16 ``[G * 32, rows]``), for one
    matrix ``blocks [rows, G, 16]``: two table lookups per byte, written in place.

    About four times faster than dequantizing then transposing: only the packed bytes are
    transposed, and values never pass through float32.
    """
    rows, groups, pair_bytes = blocks.shape
    if scales.shape != (rows, groups) or pair_bytes != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {blocks.shape} do not match scales {scales.shape}")
    packed = np.ascontiguousarray(blocks.reshape(rows, groups * BLOCK // 2).T)
    index = np.ascontiguousarray(scales.T).astype(np.uint16) << 8  # [G, rows]
    index = index[:, None, :] | packed.reshape(groups, BLOCK // 2, rows)
    pairs = out.view(np.uint16).reshape(groups, BLOCK // 2, 2, rows)  # value 2k: low nibble
    np.take(_LOW, index, out=pairs[:, :, 0], mode="clip")  # clip: never out of range, unbuffered
    np.take(_HIGH, index, out=pairs[:, :, 1], mode="clip")


def packed_shapes(kernel_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The blocks' and scales' shapes that hold an expert kernel ``[e, in, out]``."""
    experts, inputs, outputs = kernel_shape
    groups = inputs // BLOCK
    return {"blocks": (experts, outputs, groups, BLOCK // 2), "scales": (experts, outputs, groups)}


def decode_experts(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 experts ``[e, out, groups, 16]`` (packed along ``in``) -> bfloat16 ``[e, in, out]``.

    Decoded expert by expert straight into the result, so memory is the result plus one
    expert's temporaries per thread; numpy releases the GIL in the lookups, so experts decode
    on every thread ``threads.available()`` allows.
    """
    if blocks.ndim != 4 or scales.ndim != 3:
        raise ValueError(
            f"expected MXFP4 experts [e, out, groups, 16] and [e, out, groups], "
            f"got {blocks.shape} and {scales.shape}"
        )
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise ValueError(f"MXFP4 blocks and scales are uint8, not {blocks.dtype}, {scales.dtype}")
    experts, outputs, groups, _ = blocks.shape
    result = np.empty((experts, groups * BLOCK, outputs), dtype=ml_dtypes.bfloat16)

    def decode(e: int) -> None:
        dequantize_transposed(blocks[e], scales[e], result[e])

    with ThreadPoolExecutor(max(1, min(experts, threads.available()))) as pool:
        list(pool.map(decode, range(experts)))  # list(): raise what a decode raised
    return result


def quantize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round ``[..., N]`` (N a multiple of 32) to MXFP4: ``(blocks [..., N/32, 16], scales)``."""
    *prefix, n = values.shape
    if n % BLOCK:
        raise ValueError(f"last axis {n} is not a multiple of {BLOCK}")
    groups = values.astype(np.float32).reshape(-1, BLOCK)
    # The largest FP4 magnitude is 6 = 1.5 * 2**2: pick the exponent that fits the block's max.
    peak = np.maximum(np.abs(groups).max(axis=1), np.finfo(np.float32).tiny)
    exponent = np.clip(np.ceil(np.log2(peak / 6.0)), -127, 127).astype(np.int32)
    scaled = groups / np.ldexp(np.float32(1), exponent)[:, None]
    codes = np.abs(scaled[..., None] - FP4_VALUES[None, None, :]).argmin(axis=-1).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    blocks = packed.reshape(*prefix, n // BLOCK, BLOCK // 2)
    scales = (exponent + 127).astype(np.uint8).reshape(*prefix, n // BLOCK)
    return blocks, scales
