"""One config's stages, in a process of its own: tiny config, random weights, a JAX forward,
the jax2onnx export, ONNX Runtime's logits against JAX's. The row is saved after each stage,
so the driver knows where a crash or timeout happened. Needs the ``maxtext`` environment
(imported inside the functions)."""

from __future__ import annotations

import json
import math
import tempfile
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from onnxforge.core import paths, providers
from onnxforge.driver.catalog import variant_defaults
from onnxforge.graph import signature
from onnxforge.survey.failures import (
    Recorded,
    export_error,
    parity_error,
    short_error,
)
from onnxforge.survey.settings import PARITY_BATCH, SEED, SEQUENCE
from onnxforge.survey.tiny import random_params, tiny_overrides


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def run_worker(model_name: str, result_path: Path, gates: dict[str, float]) -> None:
    """Run ``model_name``'s stages, parity held to ``gates``; its row (JSON) at
    ``result_path``, whatever happens."""
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
        run_stages(model_name, row, save, gates)
    except BaseException as exc:
        row["error"] = short_error(exc)
        row["traceback"] = traceback.format_exc()[-4000:]
    save()


def judge_parity(
    logits: Iterable[tuple[Any, Any]], gates: dict[str, float]
) -> tuple[dict[str, float], str | None]:
    """Reference (JAX) and candidate (ONNX Runtime) logits, per input, against ``gates``: the
    metrics of the input with the largest max_abs, and the row's error (None: all passed)."""
    from onnxforge.steps.parity.metrics import check_gates, compare_logits

    failures: list[str] = []
    worst: dict[str, float] = {}
    for reference, candidate in logits:
        metrics = compare_logits(reference, candidate)
        failures += check_gates(metrics, gates)
        worst = metrics if not worst or metrics["max_abs"] > worst["max_abs"] else worst
    summary = {k: worst[k] for k in ("max_abs", "kl_max", "top1_agreement")}
    return summary, parity_error(failures) if failures else None


def run_stages(model_name: str, row: dict[str, Any], save, gates: dict[str, float]) -> None:
    import jax
    import numpy as np

    from onnxforge.families.maxtext import runtime

    base_keys = set(load_yaml(runtime.config_dir() / "base.yml"))
    model_yaml = load_yaml(runtime.config_dir() / "models" / f"{model_name}.yml")
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
    ids_one = ids_rng.integers(0, config.vocab_size, (1, SEQUENCE), dtype=signature.INPUT_DTYPE)
    ids_two = ids_rng.integers(
        0, config.vocab_size, (PARITY_BATCH, SEQUENCE), dtype=signature.INPUT_DTYPE
    )
    jitted = jax.jit(forward)
    logits_one = np.asarray(jitted(ids_one))
    if not np.all(np.isfinite(logits_one)):
        raise FloatingPointError("JAX logits are not finite")
    row["instantiated"] = True
    row["logits_shape"] = list(logits_one.shape)
    row["seconds_instantiate"] = round(time.monotonic() - start, 1)
    row["stage"] = "export"
    save()

    from onnxforge.graph import tracing

    opset = variant_defaults()["opset"]
    start = time.monotonic()
    symbolic_error = None
    try:
        model_ir = tracing.trace(forward, model_name, opset)
        row["shape"] = "symbolic"
    except Exception as exc:
        symbolic_error = short_error(exc)
        row["symbolic_error"] = symbolic_error
        row["symbolic_traceback"] = traceback.format_exc()[-4000:]
        save()
        try:
            model_ir = tracing.trace(forward, model_name, opset, input_shape=(1, SEQUENCE))
        except Exception as fixed_exc:
            row["fixed_shape_error"] = short_error(fixed_exc)
            raise Recorded(export_error(symbolic_error, row["fixed_shape_error"])) from fixed_exc
        row["shape"] = "fixed shape"
    with tempfile.TemporaryDirectory(prefix="survey-") as tmp:
        row["onnx_functions"] = len(model_ir.functions)
        tracing.save(model_ir, Path(tmp))
        path = Path(tmp) / paths.ONNX_FILE
        row["onnx_nodes"] = len(model_ir.graph)
        del model_ir
        row["exported"] = True
        row["seconds_export"] = round(time.monotonic() - start, 1)
        row["stage"] = "parity"
        if symbolic_error:
            row["error"] = f"symbolic export failed ({symbolic_error})"
        save()

        session = providers.onnx_session(path, providers.DEFAULT)
        inputs = {"fixed shape": [ids_one]}.get(row["shape"], [ids_two, ids_one])
        logits = (
            (np.asarray(jitted(ids)), session.run([signature.LOGITS], signature.feeds(ids))[0])
            for ids in inputs
        )
        row["metrics"], error = judge_parity(logits, gates)
        if error:
            row["error"] = error
            return
        row["parity"] = True
        row["stage"] = "done"
