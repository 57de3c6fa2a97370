"""Peak memory of staging a MaxText model against its weight bytes (target: <= 2x).

Writes (once, cached under ``--workdir``) a Llama 3.1 checkpoint in the Hugging Face layout
(random bfloat16 weights, as the hub ships them) with Llama-3.1-8B's real widths and
vocabulary and ``--layers`` layers (2 by default), then runs ``python -m onnxforge stage
--family maxtext`` on it in a fresh process of the maxtext environment and prints its peak
RSS against the checkpoint's bytes and the staged float32 bytes. The command is killed past
``--rss-limit-gib`` to keep a shared machine alive (the figure then reads "killed at").

    .venv/bin/python benchmarks/maxtext_stage_memory.py [--hidden 1024 ...] [--json F]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30

# Samples the stage's RSS (its whole process tree) and kills it past the limit.
WRAPPER = """
import json, resource, subprocess, sys, time, psutil
limit, log = float(sys.argv[1]), open(sys.argv[2], "w"); started = time.perf_counter()
proc = subprocess.Popen(sys.argv[3:], stdout=log, stderr=log); killed = False; peak = 0
while proc.poll() is None:
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        rss = sum(p.memory_info().rss for p in tree)
    except psutil.Error:
        rss = 0
    peak = max(peak, rss)
    if rss > limit:
        proc.kill(); killed = True
    time.sleep(0.05)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "killed": killed, "wall_s": time.perf_counter() - started,
                  "peak_rss": max(peak, usage.ru_maxrss * 1024),
                  "cpu_s": usage.ru_utime + usage.ru_stime}))
"""


def llama31_config(hidden: int, intermediate: int, vocab: int, layers: int) -> dict:
    heads = hidden // 128
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "bfloat16",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 4),
        "head_dim": 128,
        "vocab_size": vocab,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "rope_theta": 500000.0,
    }


def shapes(config: dict) -> dict[str, tuple[int, ...]]:
    d, m, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"] * 128, config["num_key_value_heads"] * 128
    out = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (m, d),
            p + "mlp.up_proj.weight": (m, d),
            p + "mlp.down_proj.weight": (d, m),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
    return out


def write_checkpoint(directory: Path, config: dict) -> int:
    """A bfloat16 safetensors file of random weights (norms near one); its weight bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = shapes(config)
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = int(np.prod(shape)) * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(0)
    with (directory / "model.safetensors").open("wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name, shape in tensors.items():
            base = 1.0 if name.endswith("norm.weight") else 0.0
            for row in range(0, shape[0], 4096):  # a slab at a time: the writer stays small
                slab = (
                    (shape[0] - row, *shape[1:])
                    if len(shape) == 1
                    else (min(4096, shape[0] - row), *shape[1:])
                )
                values = base + 0.02 * rng.standard_normal(slab, dtype=np.float32)
                f.write(values.astype(ml_dtypes.bfloat16).tobytes())
                if len(shape) == 1:
                    break
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maxtext-stage-memory"))
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rss-limit-gib", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = llama31_config(args.hidden, args.intermediate, args.vocab, args.layers)
    tag = f"llama31-{args.hidden}x{args.intermediate}-v{args.vocab}-l{args.layers}"
    checkpoint = args.workdir / tag
    if not (checkpoint / "config.json").exists():
        started = time.perf_counter()
        write_checkpoint(checkpoint, config)
        print(f"wrote {checkpoint} in {time.perf_counter() - started:.0f} s")
    checkpoint_bytes = (checkpoint / "model.safetensors").stat().st_size
    float32_bytes = sum(int(np.prod(s)) * 4 for s in shapes(config).values())
    stage = args.workdir / f"{tag}-stage"
    shutil.rmtree(stage, ignore_errors=True)
    python = REPO / ".venv-maxtext/bin/python"
    command = [str(python), "-c", WRAPPER, str(args.rss_limit_gib * GIB), str(stage) + ".log"]
    command += [str(python), "-m", "onnxforge", "stage", "--family", "maxtext"]
    command += ["--checkpoint", str(checkpoint), "--options", json.dumps({"model": "llama3.1-8b"})]
    command += ["--out", str(stage)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures |= {"checkpoint_bytes": checkpoint_bytes, "float32_weight_bytes": float32_bytes}
    peak = figures["peak_rss"]
    verdict = (
        "killed at" if figures["killed"] else ("met" if peak <= 2 * float32_bytes else "NOT met")
    )
    print(
        f"stage {tag}: rc {figures['rc']}, {figures['wall_s']:.0f} s wall, "
        f"{figures['cpu_s']:.0f} CPU-s"
    )
    print(
        f"peak RSS {peak / GIB:.2f} GiB = {peak / float32_bytes:.2f} x the float32 weights "
        f"({float32_bytes / GIB:.2f} GiB), {peak / checkpoint_bytes:.2f} x the bfloat16 "
        f"checkpoint ({checkpoint_bytes / GIB:.2f} GiB); target <= 2 x float32 weights: {verdict}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
