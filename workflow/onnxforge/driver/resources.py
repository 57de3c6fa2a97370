"""Rule resources sized by the model: what a job asks its scheduler for (SLURM's memory and
time) from the bytes of the folder it reads, so that a gpt-oss-120b export asks for what it
needs and a tiny model's asks for little. Each retry (Snakemake's ``attempt``) asks for half
as much again: a job killed for memory is resubmitted bigger.

The factors are the weights' copies a step holds at once, from how the steps are built: stage
streams tensor by tensor (bounded by the largest file it reads); export holds the JAX
parameters, the traced graph's initializers and the float32 expansion of packed (MXFP4)
experts; parity holds JAX's, ONNX Runtime's and transformers' copies, plus logits.
"""

from __future__ import annotations

from pathlib import Path

MB = 2**20
# step: (fixed MB, MB per MB of the input folder, or of its largest file for stage)
# quantize holds the float export memory-mapped, one float weight read at a time, and the
# quantized ones (a third of it at 8 bits, a sixth at 4).
MEMORY = {"stage": (4000, 2), "export": (2000, 4), "quantize": (2000, 1), "parity": (3000, 5)}
# step: (fixed minutes, minutes per GB of the input folder)
RUNTIME = {"stage": (60, 1), "export": (120, 4), "quantize": (60, 4), "parity": (120, 6)}


def _files(folder: Path) -> list[int]:
    folder = Path(folder)
    return [f.stat().st_size for f in folder.rglob("*") if f.is_file()] if folder.is_dir() else []


def memory_mb(step: str, folder: Path, attempt: int = 1) -> int:
    """``mem_mb`` of ``step`` reading ``folder`` (0 bytes while it does not exist yet)."""
    fixed, per_mb = MEMORY[step]
    sizes = _files(folder)
    read = (max(sizes, default=0) if step == "stage" else sum(sizes)) / MB
    return int((fixed + per_mb * read) * (1 + (attempt - 1) / 2))


def runtime_min(step: str, folder: Path, attempt: int = 1) -> int:
    """``runtime`` (minutes) of ``step`` reading ``folder``."""
    fixed, per_gb = RUNTIME[step]
    return int((fixed + per_gb * sum(_files(folder)) / 2**30) * (1 + (attempt - 1) / 2))
