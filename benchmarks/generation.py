"""Generation speed of our KV-cache exports against ONNX Runtime GenAI's model builder (fp32)
and optimum-onnx's export of the same weights (issue 11).

Two shapes written by transformers (synthetic checkpoints, through our DAG): a Llama (vocab
32000, hidden 512, 4 layers, GQA 8/4; MaxText family) and a GPT-OSS (same widths, 32 experts
top-4, sliding window 128). Per model: prefill of 128 and 512 tokens (ms) and ms per generated
token (64 greedy tokens after a 128-token prompt), ONNX Runtime on the CPU, 2 threads, f32.
Each figure is the median over ``--rounds`` interleaved rounds (every model once per round, in
a fresh process, so that all see the same load); ratios are against GenAI's builder.

Our export and optimum's run in a plain ONNX Runtime loop (the same I/O contract, a growing
cache); GenAI's builder export runs in ``onnxruntime_genai``, and so does ours a second time
(its folder has genai_config.json; ``f32-kv``'s, like the builder's, keeps GenAI's shared
fixed-size cache buffers), for a like-for-like row. Ours is
measured twice: ``f32-kv`` (ONNX Runtime's fused GroupQueryAttention and MoE) and
``f32-kv-plain`` (standard ONNX only).

    benchmarks/generation_envs.sh /work/bench-envs      # throwaway anchor environments
    .venv/bin/python benchmarks/generation.py --envs /work/bench-envs [--json F]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
WIDTHS = "vocab_size=32000&hidden_size=512&num_hidden_layers=4&num_attention_heads=8"
WIDTHS += "&num_key_value_heads=4&head_dim=64"
SHAPES = {
    "llama": {
        "family": "maxtext",
        "options": {"model": "llama2-7b"},
        "source": f"synthetic://maxtext?arch=llama&seed=0&{WIDTHS}&intermediate_size=1408",
    },
    "gpt-oss": {
        "family": "gpt_oss",
        "source": f"synthetic://gpt_oss?seed=0&{WIDTHS}&intermediate_size=512"
        "&num_local_experts=32&num_experts_per_tok=4&sliding_window=128",
    },
}
PREFILLS, PROMPT, GENERATED = (128, 512), 128, 64
# Ours: ONNX Runtime's fused attention and MoE (the default KV export), and standard ONNX only.
VARIANTS = ("f32-kv", "f32-kv-plain")

# One measurement in a fresh process: {"prefill_128": ms, "prefill_512": ms, "per_token": ms}.
ORT_WORKER = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, threads = sys.argv[1], int(sys.argv[2])
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
inputs = {i.name: i for i in session.get_inputs()}
pasts = sorted(n for n in inputs if n.startswith("past_key_values"))
outputs = [o.name for o in session.get_outputs()]
dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
def feed(ids, total, past):
    f = {"input_ids": ids.astype(dtype[inputs["input_ids"].type])}
    f["attention_mask"] = np.ones((1, total), dtype[inputs["attention_mask"].type])
    if "position_ids" in inputs:
        f["position_ids"] = np.arange(total - ids.shape[1], total)[None].astype(
            dtype[inputs["position_ids"].type])
    f.update(past)
    return f
def empty():
    out = {}
    for n in pasts:
        shape = [1 if d == "batch_size" or d == "batch" else 0 if isinstance(d, str) else d
                 for d in inputs[n].shape]
        out[n] = np.zeros(shape, np.float32)
    return out
def run(ids, total, past):
    values = session.run(None, feed(ids, total, past))
    present = {}
    for name, value in zip(outputs[1:], values[1:]):
        present[name.replace("present", "past_key_values")] = value
    return values[0], present
rng = np.random.default_rng(0)
result = {}
run(rng.integers(0, 256, (1, 8)), 8, empty())  # warm-up
for n in %(prefills)s:
    ids = rng.integers(0, 256, (1, n))
    start = time.perf_counter(); run(ids, n, empty())
    result[f"prefill_{n}"] = (time.perf_counter() - start) * 1e3
logits, past = run(rng.integers(0, 256, (1, %(prompt)d)), %(prompt)d, empty())
start = time.perf_counter()
for i in range(%(generated)d):
    token = np.asarray([[int(logits[0, -1].argmax())]])
    logits, past = run(token, %(prompt)d + i + 1, past)
result["per_token"] = (time.perf_counter() - start) * 1e3 / %(generated)d
print(json.dumps(result))
"""

GENAI_WORKER = r"""
import json, sys, time
import numpy as np, onnxruntime_genai as og
folder, threads = sys.argv[1], int(sys.argv[2])
config = og.Config(folder)
config.clear_providers()
model = og.Model(config)
rng = np.random.default_rng(0)
def generator(length):
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length, do_sample=False)
    return og.Generator(model, params)
result = {}
# warm-up; GenAI's sliding-window cache must hold the window (GPT-OSS: 128)
g = generator(%(prompt)d + %(generated)d + 1)
g.append_tokens(rng.integers(0, 256, 8).astype(np.int32))
for n in %(prefills)s:
    g = generator(n + 1)
    ids = rng.integers(0, 256, n).astype(np.int32)
    start = time.perf_counter(); g.append_tokens(ids)
    result[f"prefill_{n}"] = (time.perf_counter() - start) * 1e3
g = generator(%(prompt)d + %(generated)d + 1)
g.append_tokens(rng.integers(0, 256, %(prompt)d).astype(np.int32))
start = time.perf_counter()
for _ in range(%(generated)d):
    g.generate_next_token()
result["per_token"] = (time.perf_counter() - start) * 1e3 / %(generated)d
print(json.dumps(result))
"""


def worker(template: str) -> str:
    return template % {"prefills": PREFILLS, "prompt": PROMPT, "generated": GENERATED}


def run(command: list[str], log: Path, env: dict | None = None) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def set_threads(folder: Path, threads: int) -> None:
    """GenAI's session options: the same thread count as the ONNX Runtime loop."""
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    path.write_text(json.dumps(config, indent=2))


def with_eos(checkpoint: Path, copy: Path) -> Path:
    """The checkpoint with an end-of-sequence id in config.json, which GenAI's builder insists
    on (synthetic checkpoints have none; the id changes no weight): links to its files."""
    config = json.loads((checkpoint / "config.json").read_text())
    if config.get("eos_token_id") is not None:
        return checkpoint
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for path in checkpoint.iterdir():
        if path.name != "config.json":
            (copy / path.name).symlink_to(path.resolve())
    config["eos_token_id"] = config["vocab_size"] - 1
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


def build_ours(
    scratch: Path,
    shapes: list[str],
    variants: tuple[str, ...] = VARIANTS,
    sources: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Our exports (``variants``) and the checkpoints through the DAG, in one Snakemake call;
    ``sources``: a shape's checkpoint other than ``SHAPES``' (e.g. with ``&trained=STEPS``)."""
    sources = sources or {}
    config = {
        "models": {
            f"bench-{name}": {
                "family": SHAPES[name]["family"],
                **({"options": SHAPES[name]["options"]} if "options" in SHAPES[name] else {}),
                "checkpoints": {"hf": {"source": sources.get(name, SHAPES[name]["source"])}},
            }
            for name in shapes
        },
    }
    (scratch / "bench-config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/bench-{name}/hf/export/{v}" for name in shapes for v in variants]
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(HERE / "Snakefile")]
    command += ["--directory", str(scratch), "--cores", "2", *targets]
    # The export always reruns: a change to our Python (a graph pass, a lowering) is what a
    # benchmark run measures, and Snakemake does not see it. (After the targets: --forcerun
    # takes several values.)
    command += ["--forcerun", "export", "quantize"]
    command += ["--configfile", str(HERE / "config.yaml"), str(scratch / "bench-config.yaml")]
    run(command, scratch / "logs" / f"ours-{'-'.join(shapes)}.log")
    return {name: scratch / f"results/bench-{name}/hf" for name in shapes}


def build_genai(
    genai_python: Path, checkpoint: Path, out: Path, precision: str, scratch: Path, rebuild: bool
) -> float | None:
    """GenAI's builder export of ``checkpoint`` (``-p precision -e cpu``) in ``out``, kept
    unless ``rebuild``; the builder's wall seconds, None when kept. RuntimeError if it fails."""
    if (out / "genai_config.json").exists() and not rebuild:
        return None
    shutil.rmtree(out, ignore_errors=True)
    command = [str(genai_python), "-m", "onnxruntime_genai.models.builder"]
    source = with_eos(checkpoint, scratch / f"checkpoint-{out.name}")
    command += ["-i", str(source), "-o", str(out), "-p", precision, "-e", "cpu"]
    started = time.perf_counter()
    run(command, scratch / "logs" / f"builder-{out.name}.log")
    return time.perf_counter() - started


def measure(
    contenders: dict[str, dict[str, tuple[Path, str]]],
    rounds: int,
    threads: int,
    scratch: Path,
    genai_python: Path,
) -> dict[str, dict[str, dict[str, float]]]:
    """Median figures per shape and row (``ORT_WORKER``'s or ``GENAI_WORKER``'s, by the row's
    kind, ``ort`` or ``genai``), every row once per round in a fresh process, interleaved."""
    samples: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(rounds):
        for name, rows in contenders.items():
            for row, (path, kind) in rows.items():
                python = sys.executable if kind == "ort" else str(genai_python)
                code = worker(ORT_WORKER if kind == "ort" else GENAI_WORKER)
                slug = re.sub(r"\W+", "-", row).strip("-")
                log = scratch / "logs" / f"{name}-{slug}-{kind}-{round_index}.log"
                try:
                    out = run([python, "-c", code, str(path), str(threads)], log)
                except RuntimeError as err:
                    print(f"{name}, {row}: {err}", file=sys.stderr)
                    continue
                samples.setdefault((name, row), []).append(json.loads(out.strip().splitlines()[-1]))
    table: dict[str, dict[str, dict[str, float]]] = {}
    for (name, row), runs in samples.items():
        table.setdefault(name, {})[row] = {
            key: statistics.median(r[key] for r in runs) for key in runs[0]
        }
    return table


def arguments(description: str, scratch: str) -> argparse.ArgumentParser:
    """The options these benchmarks share (a caller may add its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--envs", type=Path, default=Path("/work/bench-envs"))
    parser.add_argument("--scratch", type=Path, default=Path(scratch))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default="llama,gpt-oss")
    parser.add_argument("--json", type=Path)
    return parser


def main() -> None:
    parser = arguments(__doc__.split("\n")[0], "/tmp/generation-bench")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    args.scratch.mkdir(parents=True, exist_ok=True)
    genai_python = args.envs / "genai/bin/python"
    optimum_python = args.envs / "optimum/bin/python"
    built = build_ours(args.scratch, shapes)

    contenders: dict[str, dict[str, tuple[Path, str]]] = {}
    for name, target in built.items():
        checkpoint, ours = target / "download", target / "export/f32-kv"
        set_threads(ours, args.threads)
        rows = {"onnxforge (ORT loop)": (ours / "model.onnx", "ort")}
        rows["onnxforge (GenAI)"] = (ours, "genai")
        plain = target / "export/f32-kv-plain/model.onnx"
        rows["onnxforge f32-kv-plain (ORT loop)"] = (plain, "ort")
        builder = args.scratch / f"genai-{name}"
        try:
            build_genai(genai_python, checkpoint, builder, "fp32", args.scratch, rebuild=False)
            set_threads(builder, args.threads)
            rows["GenAI builder fp32 (GenAI)"] = (builder, "genai")
        except RuntimeError as err:
            print(f"GenAI builder, {name}: {err}", file=sys.stderr)
        optimum = args.scratch / f"optimum-{name}"
        try:
            if not (optimum / "model.onnx").exists() and optimum_python.exists():
                code = (
                    "import sys; from optimum.exporters.onnx import main_export; "
                    "main_export(sys.argv[1], sys.argv[2], task='text-generation-with-past')"
                )
                command = [str(optimum_python), "-c", code, str(checkpoint), str(optimum)]
                run(command, args.scratch / "logs" / f"optimum-{name}.log")
            if (optimum / "model.onnx").exists():
                rows["optimum-onnx (ORT loop)"] = (optimum / "model.onnx", "ort")
        except RuntimeError as err:
            print(f"optimum-onnx, {name}: {err}", file=sys.stderr)
        contenders[name] = rows

    table = measure(contenders, args.rounds, args.threads, args.scratch, genai_python)
    for name, rows in table.items():
        anchor = rows.get("GenAI builder fp32 (GenAI)")
        print(f"\n{name} (median of {args.rounds} rounds, ms; ratio to GenAI's builder)")
        print("| | prefill 128 | prefill 512 | ms / token |")
        print("|---|---|---|---|")
        for row, figures in rows.items():
            cells = []
            for key in ("prefill_128", "prefill_512", "per_token"):
                ratio = f" ({figures[key] / anchor[key]:.2f}x)" if anchor else ""
                cells.append(f"{figures[key]:.1f}{ratio}")
            print(f"| {row} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
