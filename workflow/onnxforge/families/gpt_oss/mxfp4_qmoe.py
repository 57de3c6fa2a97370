"""GPT-OSS's MXFP4 experts straight into ``com.microsoft.QMoE`` (``onnxforge.graph.qmoe``),
one expert at a time: the model is never dequantized whole.

At 8 bits with blocks of 16 or 32 the conversion is lossless: an MXFP4 value is
``v * 2 ** (s - 127)`` with ``v`` one of +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}, so ``2 * v`` is an
integer in [-12, 12] and the value is exactly the int8 code ``128 + 2 * v`` times the
power-of-two scale ``2 ** (s - 128)`` that its block shares. At 4 bits (or other blocks) each
expert is decoded to float32 and requantized (``qmoe.quantize_matrix``); the per-expert error
is returned either way (zero when lossless).

ONNX Runtime 1.32.0's CPU QMoE does not run its own MXFP4 type (``quant_type='fp4'``), so the
int8 form is the lossless variant there (see ``qmoe``'s docstring for how the CPU computes it).
"""

from __future__ import annotations

import numpy as np

from onnxforge.families.gpt_oss import mxfp4
from onnxforge.graph import qmoe

LOSSLESS_BLOCK_SIZES = (16, 32)  # int8 blocks that share one MXFP4 scale
_DOUBLED = np.rint(mxfp4.FP4_VALUES * 2).astype(np.int16)  # each FP4 code's 2 * value


def is_lossless(bits: int, block_size: int) -> bool:
    return bits == 8 and block_size in LOSSLESS_BLOCK_SIZES


def from_mxfp4(
    blocks: np.ndarray, scales: np.ndarray, bits: int = 8, block_size: int = mxfp4.BLOCK
) -> qmoe.QuantizedExperts:
    """MXFP4 experts, ``blocks [experts, N, K / 32, 16]`` and ``scales [experts, N, K / 32]``
    (packed along the contraction axis, rows in the MoE op's order: ``qmoe.interleave_rows``
    of gate and up for fc1, the staged ``down_kernel`` as it is for fc2) -> QMoE's."""
    count, n, groups, half_block = blocks.shape
    if half_block != mxfp4.BLOCK // 2 or scales.shape != (count, n, groups):
        raise ValueError(f"MXFP4 blocks {blocks.shape} do not match scales {scales.shape}")
    k = groups * mxfp4.BLOCK
    qmoe.check_layout(bits, block_size, k, "MXFP4 experts")
    lossless = is_lossless(bits, block_size)

    def one(e: int):
        source = mxfp4.dequantize(blocks[e], scales[e], np.float32)  # [n, k]
        if not lossless:
            return (*qmoe.quantize_matrix(source, bits, block_size), source)
        codes = np.empty((n, groups, mxfp4.BLOCK), np.uint8)
        codes[..., 0::2] = _DOUBLED[blocks[e] & 0x0F] + qmoe.zero_point(8)
        codes[..., 1::2] = _DOUBLED[blocks[e] >> 4] + qmoe.zero_point(8)
        half_step = np.ldexp(np.float32(1), scales[e].astype(np.int32) - 128).astype(np.float32)
        block_scales = np.repeat(half_step, mxfp4.BLOCK // block_size, axis=-1)
        return codes.reshape(n, k), block_scales, source

    return qmoe.assemble(count, n, k, bits, block_size, one)
