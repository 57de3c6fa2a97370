"""Our int4 KV export against ONNX Runtime GenAI's model builder (``-p int4 -e cpu``) on the
same trained weights, with the float32 rows beside them (issue 25).

The shapes of ``generation.py`` (Llama: vocab 32000, hidden 512, 4 layers, GQA 8/4, MaxText
family; GPT-OSS: the same widths, 32 experts top-4), trained on the project's passage
(``--trained`` steps, families/training.py) so that the rounding shows in the figures: 40 by
default, not the catalog's 200, as a step takes 5-7 s here (one thread). GPT-OSS
is written in the hub's MXFP4 layout (``&mxfp4=true``): GenAI's builder reads GPT-OSS experts
only from it, and both tools then read the same checkpoint.

Per row (ours ``f32-kv`` and ``int4-kv`` through our DAG; GenAI's ``-p fp32`` and ``-p int4``):

- ms/token (64 greedy tokens after a 128-token prompt) and prefill of 128 and 512 tokens,
  every model in ``onnxruntime_genai`` (``generation.GENAI_WORKER``), median of ``--rounds``
  interleaved rounds, each run in a fresh process;
- bytes: model.onnx + its external data;
- export wall seconds: ours, the export step of ``f32-kv`` and the ``quantize`` step (their
  Snakemake benchmark files; the int4 row adds both; one shape at a time, so that no two
  exports share the cores), and our stage step printed apart (GenAI's builder reads the
  Hugging Face files itself); GenAI's, its builder run;
- quality against transformers (float32, the family's reference) on the passage (at most
  ``TEXT_TOKENS`` ids): each model's prefill logits in ONNX Runtime as deployed, through
  ``quality.quality_figures``, the code our parity gate uses, so both tools are judged alike.

Ratios: int4 rows against GenAI's int4, float32 rows against GenAI's fp32.

    benchmarks/generation_envs.sh /work/bench-envs      # throwaway anchor environments
    .venv/bin/python benchmarks/quantization.py --envs /work/bench-envs [--shapes llama]
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
from generation import SHAPES, arguments, build_genai, build_ours, measure, set_threads

from onnxforge.core import paths, texts
from onnxforge.families import get_family
from onnxforge.steps.parity import quality

VARIANTS = ("f32-kv", "int4-kv")
# Rows: (ours or GenAI, precision); each row's anchor is GenAI's row of its precision.
ROWS = {
    "onnxforge f32-kv": ("ours", "fp32"),
    "GenAI fp32": ("genai", "fp32"),
    "onnxforge int4-kv": ("ours", "int4"),
    "GenAI int4": ("genai", "int4"),
}
TEXT_TOKENS = 512  # as parity's text_tokens
SPEED = ("per_token", "prefill_128", "prefill_512")
QUALITY = ("kl_mean", "top1_agreement", "ppl_ratio")


def sources(shapes: list[str], steps: int) -> dict[str, str]:
    """Each shape's checkpoint trained ``steps`` steps (GPT-OSS in the hub's MXFP4 layout)."""
    extra = {"gpt-oss": "&mxfp4=true"}
    return {n: f"{SHAPES[n]['source']}&trained={steps}{extra.get(n, '')}" for n in shapes}


def step_seconds(target: Path, step: str, variant: str) -> float:
    """Wall seconds of one step's last run, from its Snakemake benchmark file."""
    name = paths.step_log(step, paths.BENCHMARK).rsplit("/", 1)[-1].format(variant=variant)
    with open(target / "logs" / name) as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx"))


def prefill_logits(model: Path, ids: np.ndarray, threads: int) -> np.ndarray:
    """Logits of one prefill (empty cache) of ``ids [1, n]`` in ONNX Runtime; the feeds are
    read off the graph's inputs, so ours and GenAI's builder's both run (the builder names the
    cache's width, ``kv_cache_dim``, and a sliding layer's fixed length: genai_config.json's)."""
    import onnxruntime as ort

    decoder = json.loads((model.parent / "genai_config.json").read_text())["model"]["decoder"]

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    n = ids.shape[1]
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(n)}
    feeds = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            _batch, heads, past, width = spec.shape
            heads = heads if isinstance(heads, int) else decoder["num_key_value_heads"]
            width = width if isinstance(width, int) else decoder["head_size"]
            # GenAI's sliding layers keep a cache of the window's size, filled by the mask
            past = decoder["sliding_window"]["window_size"] if past == "past_sliding_length" else 0
            feeds[spec.name] = np.zeros((1, heads, past, width), np.float32)
        else:
            integer = np.int32 if spec.type == "tensor(int32)" else np.int64
            feeds[spec.name] = values[spec.name].reshape(1, n).astype(integer)
    return session.run(["logits"], feeds)[0]


def quality_figures(
    family: str, target: Path, folders: dict[str, Path], threads: int
) -> dict[str, dict[str, Any]]:
    """Per row, ``quality.quality_figures`` of its ONNX prefill logits against transformers'
    on the passage."""
    download, stage = target / "download", target / "stage"
    vocab = json.loads((download / "config.json").read_text())["vocab_size"]
    inputs = texts.text_inputs(texts.load_tokenizer(download), vocab, TEXT_TOKENS, np.int64)
    ids = next(v for k, v in inputs.items() if k.startswith("text_long"))
    (reference,) = get_family(family).reference_logits(download, stage, [ids])
    return {
        row: quality.quality_figures(
            prefill_logits(folder / "model.onnx", ids, threads), reference, ids
        )
        for row, folder in folders.items()
    }


def cell(value: float, anchor: float | None, digits: str) -> str:
    ratio = f" ({value / anchor:.2f}x)" if anchor else ""
    return f"{value:{digits}}{ratio}"


def print_table(name: str, rows: dict[str, dict[str, Any]], rounds: int) -> None:
    print(f"\n{name} (median of {rounds} rounds through onnxruntime_genai, ms; ratios to GenAI's")
    print("row of the same precision; export s of int4-kv = f32-kv export + quantize)")
    print(
        "| | ms / token | prefill 128 | prefill 512 | bytes | export s | mean KL | top-1 "
        "| ppl ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row, figures in rows.items():
        anchor = rows.get(f"GenAI {ROWS[row][1]}") if row.startswith("onnxforge") else None
        quantized = ROWS[row][1] != "fp32"
        cells = [cell(figures[k], anchor and anchor.get(k), ".2f") for k in SPEED]
        cells.append(cell(figures["bytes"] / 1e6, anchor and anchor["bytes"] / 1e6, ".1f") + " MB")
        export = cell(figures["export_s"], anchor and anchor.get("export_s"), ".0f")
        if "quantize_s" in figures:
            export += f" [{figures['base_export_s']:.0f} + {figures['quantize_s']:.0f}]"
        cells.append(export)
        for key in QUALITY:
            value = figures["quality"][key]
            digits = ".2e" if key == "kl_mean" and not quantized else ".4f"
            cells.append(cell(value, anchor and quantized and anchor["quality"][key], digits))
        print(f"| {row} | " + " | ".join(cells) + " |")


def machine(threads: int) -> str:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as handle:
        cpu = next((ln.split(":", 1)[1].strip() for ln in handle if "model name" in ln), cpu)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, {threads} threads; onnxruntime {onnxruntime.__version__}; "
        f"load average {load}"
    )


def main() -> None:
    parser = arguments(" ".join(__doc__.split("\n\n")[0].split()), "/tmp/quantization-bench")
    parser.add_argument("--trained", type=int, default=40, help="training steps (checkpoints)")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    args.scratch.mkdir(parents=True, exist_ok=True)
    genai_python = args.envs / "genai/bin/python"
    print(f"machine: {machine(args.threads)}", flush=True)
    built: dict[str, Path] = {}
    for name in shapes:  # one at a time: each export's wall time is its own
        built |= build_ours(args.scratch, [name], VARIANTS, sources([name], args.trained))

    contenders: dict[str, dict[str, tuple[Path, str]]] = {}
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    for name, target in built.items():
        folders, rows = {}, {}
        base_s = step_seconds(target, "export", "f32-kv")
        for row, (tool, precision) in ROWS.items():
            if tool == "ours":
                variant = "f32-kv" if precision == "fp32" else f"{precision}-kv"
                folder = target / "export" / variant
                seconds = step_seconds(target, "export", variant)
                rows[row] = {"export_s": seconds}
                if variant != "f32-kv":
                    rows[row] = {"export_s": base_s + seconds, "base_export_s": base_s}
                    rows[row]["quantize_s"] = seconds
            else:
                folder = args.scratch / f"genai-{name}-{precision}"
                try:
                    seconds = build_genai(
                        genai_python, target / "download", folder, precision, args.scratch, True
                    )
                except RuntimeError as err:
                    print(f"GenAI builder, {name} {precision}: {err}", file=sys.stderr)
                    continue
                rows[row] = {"export_s": seconds}
            set_threads(folder, args.threads)
            folders[row] = folder
            rows[row]["bytes"] = model_bytes(folder)
        print(f"{name}: quality against transformers", flush=True)
        for row, figures_of in quality_figures(
            SHAPES[name]["family"], target, folders, args.threads
        ).items():
            rows[row]["quality"] = figures_of
        contenders[name] = {row: (folder, "genai") for row, folder in folders.items()}
        figures[name] = rows
        training = target / "download" / "training.json"
        if training.exists():
            record = json.loads(training.read_text())
            print(
                f"{name}: trained {record['steps']} steps, passage loss "
                f"{record['initial_loss']} -> {record['final_loss']} (uniform "
                f"{record['uniform_loss']})"
            )
        stage_s = step_seconds(target, "stage", "")
        print(f"{name}: our stage step (before export; GenAI's builder has none) {stage_s:.0f} s")

    speed = measure(contenders, args.rounds, args.threads, args.scratch, genai_python)
    for name, rows in figures.items():
        for row in rows:
            rows[row].update(speed.get(name, {}).get(row, dict.fromkeys(SPEED, float("nan"))))
        print_table(name, rows, args.rounds)
    print(f"\nmachine at the end: {machine(args.threads)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
