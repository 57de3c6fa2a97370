"""Stage and export at GPT-OSS-20B widths: wall time and peak memory against targets.

Writes (once, cached under ``--workdir``) a 2-layer checkpoint with gpt-oss-20b's real widths
and vocabulary in the hub's Hugging Face layout (MXFP4 experts, random weights), then runs
``python -m onnxforge stage`` and ``export`` each in a fresh process and compares:

- stage peak RSS <= largest staged tensor + 1 GiB; stage throughput >= 0.5x a plain file copy
- export peak RSS <= 2x the weight bytes at the export dtype

    /tmp/probe/bin/python benchmarks/stage_export_scale.py [--export-dtype bfloat16] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import psutil

from onnxforge.driver.catalog import variant_defaults

GIB = 1 << 30
OPSET = variant_defaults()["opset"]
V, H, INTER, HEADS, KV, HD, E, LAYERS = 201088, 2880, 2880, 64, 8, 64, 32, 2
# As transformers' GptOssConfig defaults (= openai/gpt-oss-20b) but 32 experts and 2 layers.
# fmt: off
CONFIG = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "torch_dtype": "bfloat16",
    "vocab_size": V, "hidden_size": H, "intermediate_size": INTER, "head_dim": HD,
    "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV,
    "num_local_experts": E, "num_experts_per_tok": 4, "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2),
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "swiglu_limit": 7.0,
    "attention_bias": True, "tie_word_embeddings": False,
    "rope_parameters": {
        "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "truncate": False, "original_max_position_embeddings": 4096, "rope_theta": 150000.0,
    },
    "quantization_config": {"quant_method": "mxfp4"},
}
# fmt: on
BF16, U8 = "BF16", "U8"

# Each measured command runs under this wrapper, so RUSAGE_CHILDREN is that command's alone.
# It also samples RSS and kills the command past a limit, to keep the machine alive.
WRAPPER = """
import json, resource, subprocess, sys, time, psutil
limit, log = float(sys.argv[1]), open(sys.argv[2], "w"); started = time.perf_counter()
proc = subprocess.Popen(sys.argv[3:], stderr=log); killed = False
while proc.poll() is None:
    try:
        rss = psutil.Process(proc.pid).memory_info().rss
    except psutil.Error:
        rss = 0
    if rss > limit:
        proc.kill(); killed = True
    time.sleep(0.1)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "seconds": time.perf_counter() - started,
    "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024,
    "killed": killed}))
"""


def tensor_specs() -> list[tuple[str, str, tuple[int, ...]]]:
    specs = [
        ("model.embed_tokens.weight", BF16, (V, H)),
        ("model.norm.weight", BF16, (H,)),
        ("lm_head.weight", BF16, (V, H)),
    ]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        specs += [(f"{p}.input_layernorm.weight", BF16, (H,))]
        specs += [(f"{p}.post_attention_layernorm.weight", BF16, (H,))]
        for proj, out, inp in (("q", HEADS * HD, H), ("k", KV * HD, H), ("v", KV * HD, H)):
            specs += [(f"{p}.self_attn.{proj}_proj.weight", BF16, (out, inp))]
            specs += [(f"{p}.self_attn.{proj}_proj.bias", BF16, (out,))]
        specs += [(f"{p}.self_attn.o_proj.weight", BF16, (H, HEADS * HD))]
        specs += [(f"{p}.self_attn.o_proj.bias", BF16, (H,)), (f"{p}.self_attn.sinks", BF16, (64,))]
        specs += [(f"{p}.mlp.router.weight", BF16, (E, H)), (f"{p}.mlp.router.bias", BF16, (E,))]
        for name, out in (("gate_up_proj", 2 * INTER), ("down_proj", H)):
            specs += [(f"{p}.mlp.experts.{name}_blocks", U8, (E, out, 90, 16))]
            specs += [(f"{p}.mlp.experts.{name}_scales", U8, (E, out, 90))]
            specs += [(f"{p}.mlp.experts.{name}_bias", BF16, (E, out))]
    return specs


def chunks(name: str, dtype: str, shape: tuple[int, ...], rng: np.random.Generator):
    """The tensor's bytes, ~64 MB of rows at a time: the writer never holds a whole tensor."""
    row = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, (64 << 20) // max(1, row * 2))
    for start in range(0, shape[0], step):
        rows = (min(step, shape[0] - start), *shape[1:])
        if name.endswith("_scales"):  # power-of-two exponents near 2**0: sane weights
            yield rng.integers(120, 131, rows, dtype=np.uint8).tobytes()
        elif dtype == U8:
            yield rng.integers(0, 256, rows, dtype=np.uint8).tobytes()
        else:
            x = rng.standard_normal(rows, dtype=np.float32) * 0.02
            x += 1.0 if name.endswith("norm.weight") else 0.0
            yield x.astype(ml_dtypes.bfloat16).tobytes()


def write_checkpoint(directory: Path) -> Path:
    """Stream a safetensors file: header with every offset first, then tensor by tensor."""
    path = directory / "model.safetensors"
    if (directory / "complete").exists():
        record_hashes(directory)
        return path
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    specs = tensor_specs()
    for name, dtype, shape in specs:
        end = offset + int(np.prod(shape, dtype=np.int64)) * (2 if dtype == BF16 else 1)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, dtype, shape in specs:
            for data in chunks(name, dtype, shape, rng):
                f.write(data)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    seconds = time.perf_counter() - started
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {seconds:.0f}s")
    (directory / "complete").write_text("")
    record_hashes(directory)
    return path


def record_hashes(directory: Path) -> None:
    """The manifest the download step writes: stage reads the checkpoint's hashes from it."""
    from onnxforge.core import outputs

    if not (directory / outputs.MANIFEST).exists():
        outputs.write_manifest(directory, "download", {})


def measure(cmd: list[str], limit: float, log: Path) -> dict:
    """Run ``cmd`` in a fresh process: exit code, wall seconds, peak RSS; stderr to ``log``.

    Dirty pages are flushed first, so no command pays for the writeback of the one before.
    """
    os.sync()
    wrapper = [sys.executable, "-c", WRAPPER, str(limit), str(log), *cmd]
    out = subprocess.run(wrapper, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        print(f"{cmd[2:5]}: exit {result['rc']}:\n{log.read_text()[-3000:]}", file=sys.stderr)
    return result


def staged_sizes(ckpt: Path, dtype: str) -> list[int]:
    """Bytes of every model parameter at ``dtype``, from the model built on config.json."""
    import jax.numpy as jnp
    from flax import nnx

    from onnxforge.core import params_store
    from onnxforge.families import get_family

    family = get_family("gpt_oss")
    config = family.read_config(ckpt)
    shapes = params_store.state_shapes(nnx.eval_shape(lambda: family.build(config, jnp.float32)))
    item = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).itemsize
    return [int(np.prod(shape, dtype=np.int64)) * item for shape, _ in shapes.values()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/onnxforge-bench"))
    p.add_argument("--export-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--skip-export", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    from onnxforge.core.safetensors_stream import CheckpointReader

    ckpt_dir = args.workdir / "gpt-oss-20b-2layers"
    ckpt = write_checkpoint(ckpt_dir)
    reader = CheckpointReader(ckpt_dir)  # reads back: every tensor, shape and offset
    assert {n: s for n, _, s in tensor_specs()} == {n: t.shape for n, t in reader.tensors.items()}
    assert reader.read("model.norm.weight").shape == (H,)
    ckpt_bytes = ckpt.stat().st_size
    largest = max(staged_sizes(ckpt_dir, "bfloat16"))  # the embedding; experts stay packed
    limit = psutil.virtual_memory().available - 2 * GIB  # kill a step before the machine OOMs
    py, fig = sys.executable, {"checkpoint_bytes": ckpt_bytes, "largest_tensor_bytes": largest}

    runs = args.workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)

    def run(name: str, *cmd: str) -> dict:
        return measure([py, *cmd], limit, runs / f"{name}.log")

    copy = run("copy", "-c", "import shutil, sys; shutil.copyfile(*sys.argv[1:])", str(ckpt),
               str(runs / "copy.safetensors"))  # fmt: skip
    (runs / "copy.safetensors").unlink()
    imports = run("imports", "-c", "import onnxforge.families.staging, jax, orbax.checkpoint")
    stage_dir = runs / "stage"
    stage = run("stage", "-m", "onnxforge", "stage", "--family", "gpt_oss",
                "--checkpoint", str(ckpt_dir), "--out", str(stage_dir))  # fmt: skip
    fig.update(
        copy_seconds=copy["seconds"],
        copy_bytes_per_s=ckpt_bytes / copy["seconds"],
        import_peak_rss=imports["peak_rss"],
        stage_rc=stage["rc"],
        stage_seconds=stage["seconds"],
        stage_cpu_seconds=stage["cpu_seconds"],  # user + system: less swayed by other load
        stage_bytes_per_s=ckpt_bytes / stage["seconds"],
        stage_peak_rss=stage["peak_rss"],
        stage_vs_copy=copy["seconds"] / stage["seconds"],  # throughput ratio, same bytes
        stage_rss_over_largest=stage["peak_rss"] - largest,
    )
    checks = {
        "stage succeeds": stage["rc"] == 0,
        "stage peak RSS <= largest tensor + 1 GiB": stage["peak_rss"] <= largest + GIB,
        "stage throughput >= 0.5x copy": fig["stage_vs_copy"] >= 0.5,
    }
    if stage["rc"] == 0 and not args.skip_export:
        weights = sum(staged_sizes(ckpt_dir, args.export_dtype))
        export = run("export", "-m", "onnxforge", "export", "--family", "gpt_oss",
                     "--stage", str(stage_dir), "--dtype", args.export_dtype, "--opset", str(OPSET),
                     "--out", str(runs / f"export-{args.export_dtype}"))  # fmt: skip
        fig.update(
            export_dtype=args.export_dtype,
            export_weight_bytes=weights,
            export_rc=export["rc"],
            export_killed_at_limit=export["killed"],
            export_seconds=export["seconds"],
            export_cpu_seconds=export["cpu_seconds"],
            export_peak_rss=export["peak_rss"],
            export_rss_over_weights=export["peak_rss"] / weights,
        )
        checks["export succeeds"] = export["rc"] == 0
        checks["export peak RSS <= 2x weight bytes"] = export["peak_rss"] <= 2 * weights
    fig["checks"] = {name: "PASS" if ok else "FAIL" for name, ok in checks.items()}

    print(f"\n{'figure':<28}{'value':>22}")
    for key, value in fig.items():
        if key == "checks":
            continue
        if isinstance(value, float) and "bytes_per_s" in key:
            text = f"{value / 1e6:,.0f} MB/s"
        elif isinstance(value, int) and ("bytes" in key or "rss" in key):
            text = f"{value / GIB:,.2f} GiB"
        elif isinstance(value, float):
            text = f"{value:,.2f}"
        else:
            text = str(value)
        print(f"{key:<28}{text:>22}")
    print("\n" + "\n".join(f"{verdict}  {name}" for name, verdict in fig["checks"].items()))
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
