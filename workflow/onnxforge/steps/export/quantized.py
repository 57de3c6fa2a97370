"""A quantized variant's export: the float KV export it quantizes (``quantizes: f32-kv``),
its weights as int4 or int8 (``quantize:``), checked and run once like any export.

Dense MatMuls go through ONNX Runtime's own quantizer (``graph.quantize``: ``MatMulNBits``, or
blocked ``DequantizeLinear`` + ``MatMul`` for an ``ops: plain`` export); MoE experts become
``com.microsoft.QMoE`` of the same bits and block (``graph.qmoe``; a plain export's experts
stay float: per-expert MatMuls over gathered kernels, which no quantizer here rewrites). The
embedding table is quantized where it is tied to the LM head (``embeddings: tied``), so the
model's one table holds one set of values. No JAX: the float export is the input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxforge.core import paths, progress
from onnxforge.steps.export import smoke_run


def quantize_export(base_dir: Path, out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``base_dir``'s export quantized into ``out_dir`` as ``settings`` (the variant's
    ``quantize``) say; what it did, for the manifest (and the report). The float export's
    ``ops`` (its manifest) pick the format: ``ort``, MatMulNBits and QMoE; ``plain``,
    DequantizeLinear + MatMul."""
    import onnx

    from onnxforge.graph import quantize

    base = json.loads((Path(base_dir) / "manifest.json").read_text())["export"]
    ops = base["ops"]
    with progress.phase(f"quantize (int{settings['bits']}, block {settings['block_size']})"):
        summary = quantize.quantize(
            base_dir,
            out_dir,
            bits=settings["bits"],
            block_size=settings["block_size"],
            symmetric=settings["symmetric"],
            accuracy_level=settings["accuracy_level"],
            algorithm=settings["algorithm"],
            format="plain" if ops == "plain" else "ort",
            lm_head=settings["lm_head"],
            embeddings=True if settings["embeddings"] == "all" else None,
            experts=ops == "ort",
        )
    with progress.phase("check (onnx.checker)"):
        onnx.checker.check_model(str(out_dir / paths.ONNX_FILE))
    with progress.phase("run once (ONNX Runtime)"):
        ran = smoke_run.run_once(out_dir / paths.ONNX_FILE, "kv", "float32")
    return {
        "decoder": "kv",
        "dtype": base["dtype"],
        "opset": base["opset"],
        "ops": ops,
        "genai_files": base.get("genai_files", []),  # copied: the release carries them
        "quantize": settings,
        "quantized": summary,
        "ran": ran,
        "bytes": {f: (out_dir / f).stat().st_size for f in (paths.ONNX_FILE, paths.DATA_FILE)},
    }
