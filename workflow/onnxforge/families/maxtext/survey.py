"""Survey: every model config MaxText ships, at a tiny size, through onnxforge's pipeline.

For each ``configs/models/*.yml``: build the model with tiny dimensions and seeded random
weights, run it in JAX, export it with jax2onnx (symbolic batch and sequence; a fixed shape
when that fails), and compare ONNX Runtime's logits with JAX's. Each config runs in its own
subprocess with a timeout (a config can crash or hang the interpreter, and MaxText's pyconfig
keeps global state). The result is a Markdown table and a JSON file of the same rows; a config
that fails is a row, not a failure of the survey.

    python -m onnxforge.families.maxtext.survey --out results/maxtext-survey.md \
        [--only llama2-7b,gemma-2b] [--jobs N] [--timeout S]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

GATES = {"max_abs": 1e-3, "kl_max": 1e-4, "top1_min": 1.0}
SEQUENCE = 16
PARITY_BATCH = 2
SEED = 0
ERROR_CHARS = 160

# Tiny dimensions for every config; the per-config adjustments are in ``tiny_overrides``.
TINY: dict[str, Any] = {
    "base_emb_dim": 64,
    "base_num_query_heads": 4,
    "base_num_kv_heads": 4,
    "head_dim": 16,
    "base_mlp_dim": 128,
    "base_moe_mlp_dim": 64,
    "base_num_decoder_layers": 2,
    "vocab_size": 256,
    "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "kv_lora_rank": 8,
    "q_lora_rank": 0,
    "use_qwix_quantization": False,
    "grad_dtype": "float32",
    "max_target_length": 64,
    "max_prefill_predict_length": 64,
}

# Size fields some configs set: shrunk only where the config sets them.
SHRINK: dict[str, int] = {
    "global_head_dim": 32,
    "global_num_kv_heads": 2,
    "gdn_key_head_dim": 16,
    "gdn_value_head_dim": 16,
    "gdn_num_key_heads": 2,
    "gdn_num_value_heads": 4,
    "gdn_chunk_size": 8,
    "indexer_n_heads": 2,
    "indexer_head_dim": 16,
    "indexer_topk": 8,
    "hidden_size_per_layer_input": 16,
    "vocab_size_per_layer_input": 256,
    "o_lora_rank": 8,
    "sliding_window_size": 8,
    "chunk_attn_window_size": 8,
    "attention_output_dim": 64,
    "moe_expert_input_dim": 64,
}


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def tiny_overrides(model_yaml: dict[str, Any], base_keys: set[str]) -> dict[str, Any]:
    """The overrides that make one config tiny (only keys MaxText's base.yml knows)."""
    out = dict(TINY)
    kv = model_yaml.get("base_num_kv_heads", 4)
    q = model_yaml.get("base_num_query_heads", 4)
    if isinstance(kv, int) and isinstance(q, int) and kv < q:
        out["base_num_kv_heads"] = 2  # keep grouped-query attention grouped
    if int(model_yaml.get("q_lora_rank", 0) or 0) > 0:
        out["q_lora_rank"] = 8
    experts = int(model_yaml.get("num_experts", 1) or 1)
    if experts > 1:
        out["num_experts"] = min(experts, 4)
        per_token = int(model_yaml.get("num_experts_per_tok", 1) or 1)
        out["num_experts_per_tok"] = max(1, min(per_token, 2, out["num_experts"]))
        groups = int(model_yaml.get("n_routing_groups", -1) or -1)
        if groups > 1:
            out["n_routing_groups"] = 2
            out["topk_routing_group"] = 1
    for key, small in SHRINK.items():
        value = model_yaml.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[key] = min(value, small)
    # Layers: a whole number of the config's layer cycle after its dense prefix.
    dense = min(int(model_yaml.get("first_num_dense_layers", 0) or 0), 1)
    if "first_num_dense_layers" in model_yaml:
        out["first_num_dense_layers"] = dense
    cycle = 1
    for key in ("inhomogeneous_layer_cycle_interval", "interleave_moe_layer_step"):
        value = model_yaml.get(key)
        if isinstance(value, int) and value > 1:
            cycle = math.lcm(cycle, value)
    value = model_yaml.get("nope_layer_interval")
    if isinstance(value, int) and value > 1:
        cycle = math.lcm(cycle, value)
    prefix = max(dense, int(model_yaml.get("first_num_hash_layers", 0) or 0))
    out["base_num_decoder_layers"] = prefix + cycle * max(1, math.ceil(2 / cycle))
    fully_moe = (
        experts > 1
        and cycle == 1
        and int(model_yaml.get("first_num_dense_layers", 0) or 0) == 0
        and model_yaml.get("decoder_block") != "gemma4"
    )
    if fully_moe:
        out["base_mlp_dim"] = out["base_moe_mlp_dim"]  # MaxText requires it of a fully MoE model
    section = model_yaml.get("mrope_section", [24, 20, 20] if model_yaml.get("use_mrope") else None)
    if isinstance(section, list) and section and sum(section) > 0:
        # Multimodal RoPE: the sections split head_dim / 2 frequencies, in the config's ratios.
        factor = float(model_yaml.get("partial_rotary_factor", 1.0) or 1.0)
        while int(out["head_dim"] * factor) // 2 < len(section):
            out["head_dim"] *= 2  # room for one frequency per section
        half = int(out["head_dim"] * factor) // 2
        scaled = [max(1, round(part * half / sum(section))) for part in section]
        scaled[0] += half - sum(scaled)
        out["mrope_section"] = "[" + ",".join(map(str, scaled)) + "]"
    shared = model_yaml.get("num_kv_shared_layers")
    if isinstance(shared, int) and shared > 0:
        out["num_kv_shared_layers"] = min(shared, out["base_num_decoder_layers"] // 2)
    return {k: v for k, v in out.items() if k in base_keys}


def random_params(shapes: dict[tuple[str, ...], tuple[int, ...]], seed: int = SEED):
    """Seeded random weights: normal * 0.05, norm scales ones + noise (zeros hide errors)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in sorted(shapes.items()):
        noise = rng.standard_normal(shape).astype(np.float32) * 0.05
        is_norm = any("norm" in part.lower() for part in path) and path[-1] in ("scale", "value")
        params[path] = (1.0 + noise) if is_norm else noise
    return params


class _Recorded(Exception):
    """An error whose message is already a row's short line."""


def _short(exc: BaseException) -> str:
    if isinstance(exc, _Recorded):
        return str(exc)[:ERROR_CHARS]
    message = " ".join(str(exc).split())
    message = re.sub(r"Load model from \S+ failed: ?", "", message)
    message = re.sub(r"/tmp/\S*/(model\.onnx)", r"\1", message)
    line = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def export_error(symbolic: str, fixed: str) -> str:
    """One line for an export that failed with symbolic and with fixed shapes."""
    fixed_type = fixed.split(":", 1)[0]
    suffix = " (fixed shape too)" if fixed == symbolic else f" (fixed shape: {fixed_type})"
    head = symbolic.removesuffix("…")
    if len(head) + len(suffix) > ERROR_CHARS:
        head = head[: ERROR_CHARS - len(suffix) - 1] + "…"
    return head + suffix


# ---- worker: one config, in its own process -------------------------------------------------


def _worker(model_name: str, result_path: Path) -> None:
    row: dict[str, Any] = {
        "config": model_name,
        "instantiated": False,
        "exported": False,
        "parity": False,
        "shape": None,
        "error": None,
        "stage": "config",
    }

    def save() -> None:
        result_path.write_text(json.dumps(row, indent=1, default=str))

    save()
    try:
        _run_stages(model_name, row, save)
    except BaseException as exc:
        row["error"] = _short(exc)
        row["traceback"] = traceback.format_exc()[-4000:]
    save()


def _run_stages(model_name: str, row: dict[str, Any], save) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from onnxforge.families.maxtext import runtime
    from onnxforge.metrics import check_gates, compare_logits

    base_keys = set(_load_yaml(runtime.config_dir() / "base.yml"))
    model_yaml = _load_yaml(runtime.config_dir() / "models" / f"{model_name}.yml")
    overrides = tiny_overrides(model_yaml, base_keys)
    row["overrides"] = overrides
    save()

    start = time.monotonic()
    config = runtime.make_config(model_name, overrides, "float32")
    row["stage"] = "params"
    shapes = runtime.param_shapes(config)
    row["parameters"] = int(sum(math.prod(s) for s in shapes.values()))
    params = random_params(shapes)
    row["stage"] = "forward"
    forward = runtime.forward_function(config, params)
    ids_rng = np.random.default_rng(SEED + 1)
    ids_one = ids_rng.integers(0, config.vocab_size, (1, SEQUENCE), dtype=np.int32)
    ids_two = ids_rng.integers(0, config.vocab_size, (PARITY_BATCH, SEQUENCE), dtype=np.int32)
    jitted = jax.jit(forward)
    logits_one = np.asarray(jitted(ids_one))
    if not np.all(np.isfinite(logits_one)):
        raise FloatingPointError("JAX logits are not finite")
    row["instantiated"] = True
    row["logits_shape"] = list(logits_one.shape)
    row["seconds_instantiate"] = round(time.monotonic() - start, 1)
    row["stage"] = "export"
    save()

    import onnx_ir as ir
    from jax2onnx import to_onnx

    start = time.monotonic()
    symbolic_error = None
    try:
        model_ir = to_onnx(
            forward,
            [jax.ShapeDtypeStruct(("batch", "sequence"), jnp.int32)],
            model_name=model_name,
            opset=23,
            input_names=["input_ids"],
            output_names=["logits"],
            return_mode="ir",
        )
        row["shape"] = "symbolic"
    except Exception as exc:
        symbolic_error = _short(exc)
        row["symbolic_error"] = symbolic_error
        row["symbolic_traceback"] = traceback.format_exc()[-4000:]
        save()
        try:
            model_ir = to_onnx(
                forward,
                [jax.ShapeDtypeStruct((1, SEQUENCE), jnp.int32)],
                model_name=model_name,
                opset=23,
                input_names=["input_ids"],
                output_names=["logits"],
                return_mode="ir",
            )
        except Exception as fixed_exc:
            row["fixed_shape_error"] = _short(fixed_exc)
            raise _Recorded(export_error(symbolic_error, row["fixed_shape_error"])) from fixed_exc
        row["shape"] = "fixed shape"
    with tempfile.TemporaryDirectory(prefix="survey-") as tmp:
        path = Path(tmp) / "model.onnx"
        ir.save(model_ir, path, external_data="model.onnx.data", size_threshold_bytes=1024)
        row["onnx_nodes"] = len(model_ir.graph)
        row["onnx_functions"] = len(model_ir.functions)
        del model_ir
        row["exported"] = True
        row["seconds_export"] = round(time.monotonic() - start, 1)
        row["stage"] = "parity"
        if symbolic_error:
            row["error"] = f"symbolic export failed ({symbolic_error})"
        save()

        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = {"fixed shape": [ids_one]}.get(row["shape"], [ids_two, ids_one])
        failures: list[str] = []
        worst: dict[str, float] = {}
        for ids in inputs:
            reference = np.asarray(jitted(ids))
            candidate = session.run(["logits"], {"input_ids": ids})[0]
            metrics = compare_logits(reference, candidate)
            failures += check_gates(metrics, GATES)
            worst = metrics if not worst or metrics["max_abs"] > worst["max_abs"] else worst
        row["metrics"] = {k: worst[k] for k in ("max_abs", "kl_max", "top1_agreement")}
        if failures:
            row["error"] = f"parity: {'; '.join(dict.fromkeys(failures))}"[:ERROR_CHARS]
            return
        row["parity"] = True
        row["stage"] = "done"


# ---- driver ---------------------------------------------------------------------------------


def _run_one(model_name: str, timeout: float, workdir: Path) -> dict[str, Any]:
    result = workdir / f"{model_name}.json"
    log = workdir / f"{model_name}.log"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TMPDIR=str(workdir))
    command = [
        sys.executable,
        "-m",
        __spec__.name if __spec__ else "onnxforge.families.maxtext.survey",
    ]
    command += ["--worker", model_name, "--result", str(result)]
    start = time.monotonic()
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = round(time.monotonic() - start, 1)
    try:
        row = json.loads(result.read_text())
    except (OSError, ValueError):
        row = {"config": model_name, "instantiated": False, "exported": False, "parity": False}
    row["seconds"] = seconds
    if code is None:
        row["error"] = f"Timeout: no result after {timeout:g} s (in stage {row.get('stage')})"
    elif code != 0 and not row.get("error"):
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        row["error"] = f"process exited with {code} in stage {row.get('stage')}: {tail[0]}"[
            :ERROR_CHARS
        ]
    return row


def _versions() -> dict[str, str]:
    out = {}
    for package in ("maxtext", "jax", "flax", "jax2onnx", "onnx", "onnxruntime"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "?"
    return out


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def write_report(rows: list[dict[str, Any]], out: Path, header: dict[str, Any]) -> None:
    n = len(rows)
    inst = sum(r["instantiated"] for r in rows)
    exp = sum(r["exported"] for r in rows)
    fixed = sum(r["exported"] and r.get("shape") == "fixed shape" for r in rows)
    par = sum(r["parity"] for r in rows)
    counts = (
        f"{n} configs: {inst} instantiated, {exp} exported"
        + (f" ({fixed} only with a fixed shape)" if fixed else "")
        + f", {par} parity passed"
    )
    yes = {True: "yes", False: "no"}
    lines = [
        "# MaxText model configs through onnxforge (tiny, random weights)",
        "",
        f"**{counts}**",
        "",
        f"- Date: {header['date']}; survey run time {header['seconds']:.0f} s "
        f"({header['jobs']} jobs, timeout {header['timeout']:g} s per config)",
        *([f"- Note: {header['note']}"] if header.get("note") else []),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()),
        f"- Config dir: `{header['config_dir']}`",
        "- Settings: onnxforge's inference settings "
        f"(`{json.dumps(header['inference_settings'], sort_keys=True)}`), float32",
        f"- Tiny overrides (every config): `{json.dumps(TINY, sort_keys=True)}`; "
        "per config also: kv heads 2 where the config groups queries, experts capped at 4 "
        "with at most 2 per token, q_lora_rank 8 where the config uses one, "
        f"these fields shrunk where set: `{json.dumps(SHRINK, sort_keys=True)}`, "
        "first_num_dense_layers at most 1 and the layer count a whole layer cycle "
        "(inhomogeneous_layer_cycle_interval, interleave_moe_layer_step, nope_layer_interval) "
        "of at least 2; only keys base.yml knows are passed (the JSON has each row's overrides)",
        f"- Weights: seeded normal × 0.05 (norm scales 1 + that); instantiated = one JAX "
        f"forward on ids (1, {SEQUENCE}); exported = jax2onnx opset 23 with symbolic "
        f"(batch, sequence), or a fixed (1, {SEQUENCE}) shape when symbolic fails, saved with "
        f"external data; parity = ONNX Runtime CPU vs JAX on seeded ids "
        f"({PARITY_BATCH}, {SEQUENCE}) and (1, {SEQUENCE}), gates {GATES}",
        "",
        "| config | instantiated | exported | parity passed | max_abs | seconds | first error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        exported = yes[bool(r["exported"])]
        if r["exported"] and r.get("shape") == "fixed shape":
            exported = "yes (fixed shape)"
        max_abs = r.get("metrics", {}).get("max_abs")
        lines.append(
            f"| {r['config']} | {yes[bool(r['instantiated'])]} | {exported} | "
            f"{yes[bool(r['parity'])]} | {'' if max_abs is None else f'{max_abs:.2g}'} | "
            f"{r.get('seconds', '')} | {_cell(r.get('error'))} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(
        json.dumps({"header": header, "counts": counts, "rows": rows}, indent=1, default=str)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/maxtext-survey.md"))
    parser.add_argument("--only", default="", help="comma-separated config names")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        _worker(args.worker, args.result)
        return 0

    # The config dir from where MaxText is installed (the driver runs no model itself).
    import importlib.util

    spec = importlib.util.find_spec("maxtext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MaxText is not installed in this environment")
    config_dir = Path(next(iter(spec.submodule_search_locations))) / "configs"
    names = sorted(p.stem for p in (config_dir / "models").glob("*.yml"))
    if args.only:
        wanted = [n.strip().removesuffix(".yml") for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"no such MaxText configs: {unknown}")
        names = [n for n in names if n in wanted]

    from onnxforge.families.maxtext.runtime import INFERENCE_SETTINGS

    start = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"surveying {len(names)} MaxText configs, {args.jobs} jobs", flush=True)
    with tempfile.TemporaryDirectory(prefix="maxtext-survey-") as tmp:
        workdir = Path(tmp)

        def one(name: str) -> dict[str, Any]:
            row = _run_one(name, args.timeout, workdir)
            flags = "".join("x" if row[k] else "." for k in ("instantiated", "exported", "parity"))
            print(f"[{flags}] {name} ({row['seconds']} s) {row.get('error') or ''}", flush=True)
            return row

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(one, names))
    header = {
        "date": date,
        "seconds": time.monotonic() - start,
        "jobs": args.jobs,
        "timeout": args.timeout,
        "versions": _versions(),
        "config_dir": str(config_dir / "models"),
        "inference_settings": {**INFERENCE_SETTINGS, **{k: TINY[k] for k in TINY if "max_" in k}},
        "gates": GATES,
    }
    write_report(rows, args.out, header)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
