"""The survey's command line: every config (or ``--only`` some) in a worker subprocess of its
own with a timeout, a few at a time; then the report.

    python -m onnxforge.survey --out results/maxtext-survey.md \
        [--only llama2-7b,gemma-2b] [--jobs N] [--timeout S] [--gates JSON]

Parity is held to config.yaml's ``gates.float32`` unless ``--gates`` gives others.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

from onnxforge.core import paths
from onnxforge.survey.failures import process_error
from onnxforge.survey.report import write_report
from onnxforge.survey.settings import float32_gates, known_gates
from onnxforge.survey.tiny import TINY

PACKAGE = "onnxforge.survey"  # python -m PACKAGE --worker NAME: one config


def worker_command(model_name: str, result: Path, gates: dict[str, float]) -> list[str]:
    command = [sys.executable, "-m", PACKAGE, "--worker", model_name, "--result", str(result)]
    return [*command, "--gates", json.dumps(gates)]


def run_one(
    model_name: str,
    timeout: float,
    workdir: Path,
    gates: dict[str, float],
    command: list[str] | None = None,
) -> dict[str, Any]:
    """One config's row, from a worker process (``command``, by default ``worker_command``)
    that is killed, with its process group, after ``timeout`` seconds."""
    result = workdir / f"{model_name}.json"
    log = workdir / f"{model_name}.log"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TMPDIR=str(workdir))
    command = command or worker_command(model_name, result, gates)
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
        row["error"] = process_error(code, timeout, row.get("stage"), "")
    elif code != 0 and not row.get("error"):
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        row["error"] = process_error(code, timeout, row.get("stage"), tail[0])
    return row


def parse_gates(text: str) -> dict[str, float]:
    """``--gates``: a JSON object of gates ``metrics.check_gates`` knows."""
    try:
        return known_gates(json.loads(text))
    except ValueError as exc:  # json.JSONDecodeError is one
        raise argparse.ArgumentTypeError(str(exc)) from exc


def select_configs(names: list[str], only: str) -> list[str]:
    """``names`` cut to ``only`` (comma-separated, ``.yml`` optional; all when empty), in
    ``names``' order; an unknown name is an error."""
    if not only:
        return names
    wanted = [n.strip().removesuffix(".yml") for n in only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise SystemExit(f"no such MaxText configs: {unknown}")
    return [n for n in names if n in wanted]


def installed_config_dir() -> Path:
    """The config dir from where MaxText is installed (the driver runs no model itself)."""
    spec = importlib.util.find_spec("maxtext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MaxText is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "configs"


def versions() -> dict[str, str]:
    out = {}
    for package in ("maxtext", "jax", "flax", "jax2onnx", "onnx", "onnxruntime"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(f"{paths.SURVEY}.md"))
    parser.add_argument("--only", default="", help="comma-separated config names")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--gates", type=parse_gates, help="parity gates as JSON (default: config.yaml's float32)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gates = float32_gates() if args.gates is None else args.gates

    if args.worker:
        from onnxforge.survey.worker import run_worker

        run_worker(args.worker, args.result, gates)
        return 0

    config_dir = installed_config_dir()
    names = sorted(p.stem for p in (config_dir / "models").glob("*.yml"))
    names = select_configs(names, args.only)

    from onnxforge.families.maxtext.runtime import INFERENCE_SETTINGS

    start = time.monotonic()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"surveying {len(names)} MaxText configs, {args.jobs} jobs", flush=True)
    with tempfile.TemporaryDirectory(prefix="maxtext-survey-") as tmp:
        workdir = Path(tmp)

        def one(name: str) -> dict[str, Any]:
            row = run_one(name, args.timeout, workdir, gates)
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
        "versions": versions(),
        "config_dir": str(config_dir / "models"),
        "inference_settings": {**INFERENCE_SETTINGS, **{k: TINY[k] for k in TINY if "max_" in k}},
        "gates": gates,
    }
    write_report(rows, args.out, header)
    print(f"wrote {args.out}", flush=True)
    return 0
