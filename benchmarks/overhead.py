"""The pipeline's own overhead against its targets (issue 9).

1. ``snakemake -n`` over 100 catalog targets (tiny synthetic models of both families) <= 3 s
2. a no-op rerun (every target built, nothing to do) <= 2 s
3. parity's peak RSS (process tree) <= 3 x the weight bytes + 1 GiB, on a GPT-OSS with a few
   hundred MB of float32 weights
4. each family's tiny example through parity <= 60 s (an idle machine)
5. stage + export of a 45M-parameter Llama (maxtext family) <= 1.5 x ONNX Runtime GenAI's
   model builder on the same weights (fp32, CPU)

Every command runs in a fresh process, as the rules run it (this checkout's ``workflow`` on
PYTHONPATH); each figure is the minimum over ``--repeat`` runs, since other load on the machine
only ever adds time. Inputs are built once under ``--scratch`` (through the DAG) and reused.
``--compare DIR`` measures another checkout (say, the commit before a change) in the same runs,
alternating with this one, so that both see the same load.

Run with the ``jax`` environment's Python (it has Snakemake and psutil); the GenAI builder
needs its own environment (transformers 5 and onnx_ir; not one of the project's locks):

    python3.11 -m venv /tmp/genai && /tmp/genai/bin/pip install "onnxruntime-genai==0.18.*" \\
        transformers onnx_ir torch==2.13.0
    .venv/bin/python benchmarks/overhead.py --genai-python /tmp/genai/bin/python [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

GIB = 1 << 30
HERE = Path(__file__).resolve().parents[1]
VARIANT = "f32"
# A GPT-OSS of 384 MB of float32 weights (96M parameters, mostly embedding and experts).
MEDIUM_GPT_OSS = (
    "synthetic://gpt_oss?seed=0&vocab_size=32000&hidden_size=1024&intermediate_size=1024"
    "&num_attention_heads=16&num_key_value_heads=4&head_dim=64"
)
# 45M parameters: vocabulary 32000, hidden 512, 4 layers, 8 query / 4 kv heads.
LLAMA_45M = (
    "synthetic://maxtext?arch=llama&seed=0&vocab_size=32000&hidden_size=512"
    "&intermediate_size=1408&num_hidden_layers=4&num_attention_heads=8&num_key_value_heads=4"
    "&head_dim=64"
)
MAXTEXT_IMPORT = "from maxtext.configs import pyconfig; from maxtext.models import models"
# A word-level tokenizer over the whole vocabulary: the GenAI builder insists on one.
TOKENIZER = """
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
vocab = int(sys.argv[2])
tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0").save_pretrained(sys.argv[1])
"""


class Failed(Exception):
    """A measured command failed: its figure is left out, the others still run."""


@dataclass
class Run:
    rc: int
    seconds: float
    cpu_seconds: float  # user + system of the process and its children
    peak_rss: int  # bytes: the largest sum over the process tree, sampled, or the kernel's peak
    log: Path

    def check(self) -> Run:
        if self.rc != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise Failed(f"exit {self.rc}; the end of {self.log}:\n{tail}")
        return self


def measure(command: list[str], log: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``command`` to completion; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    os.sync()  # no command pays for the writeback of the one before
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                total = 0
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # it ended meanwhile
                        total += p.memory_info().rss
                peak = max(peak, total)
                done.wait(0.05)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    cpu = usage.ru_utime + usage.ru_stime
    return Run(proc.returncode, seconds, cpu, max(peak, usage.ru_maxrss * 1024), log)


@dataclass
class Checkout:
    """A checkout of onnxforge to measure: its Snakefile, config and ``workflow`` package."""

    repo: Path
    scratch: Path
    threads: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # the rules' 4

    @property
    def logs(self) -> Path:
        return self.scratch / "logs"

    @property
    def env(self) -> dict[str, str]:
        path = [str(self.repo / "workflow"), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}

    def python(self, environment: str) -> str:
        """The interpreter of an environment, as the Snakefile picks it locally."""
        if environment == "jax":
            return sys.executable
        return str(self.repo / f".venv-{environment}" / "bin" / "python")

    def snakemake(self, workdir: Path, overlay: dict, *args: str) -> list[str]:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
        return [
            *(sys.executable, "-m", "snakemake", "--snakefile", str(self.repo / "Snakefile")),
            *("--directory", str(workdir), "--cores", str(os.cpu_count() or 1), *args),
            *("--configfile", str(self.repo / "config.yaml"), str(workdir / "overlay.yaml")),
        ]

    def build(self, workdir: Path, overlay: dict, targets: list[str]) -> None:
        """Build ``targets`` in ``workdir`` once; a later call finds them built."""
        print(f"  building {len(targets)} target(s) in {workdir} ...", flush=True)
        measure(self.snakemake(workdir, overlay, *targets), workdir / "build.log", self.env).check()


def catalog_model(family, source: str, options: dict | None = None) -> dict:
    checkpoints = {"hf": {"source": source}}
    return {"family": family.name, "options": options or {}, "checkpoints": checkpoints}


def overlay_for(models: dict[str, dict]) -> dict:
    targets = [{"model": name, "checkpoint": "hf", "variant": VARIANT} for name in models]
    return {"models": models, "targets": targets}


def examples() -> list:
    """Each family's first tiny example."""
    from onnxforge.families import FAMILIES

    return [(family, family.examples[0]) for family in FAMILIES.values()]


@dataclass
class Figure:
    name: str
    target: str
    value: float
    limit: float
    unit: str
    details: dict
    cpu: float | None = None  # the same figure in CPU seconds (user + system): steadier

    @property
    def met(self) -> bool:
        return self.value <= self.limit


class Measurement:
    """One figure: ``prepare`` builds its inputs once per checkout, ``sample`` is one timed
    round of runs, ``figures`` reduces the rounds (the minimum: load only ever adds)."""

    def prepare(self, c: Checkout) -> object:
        return None

    def sample(self, c: Checkout, state) -> list[Run]:
        raise NotImplementedError

    def figures(self, c: Checkout, state, samples: list[list[Run]]) -> list[Figure]:
        raise NotImplementedError


def fastest(samples: list[list[Run]], index: int = 0) -> Run:
    return min((runs[index] for runs in samples), key=lambda r: r.seconds)


class DryRun(Measurement):
    """``snakemake -n`` in an empty workdir over 100 targets, half of each family."""

    def prepare(self, c: Checkout) -> dict:
        pairs = examples()
        models = {}
        for i in range(100):
            family, example = pairs[i % len(pairs)]
            source = re.sub(r"seed=\d+", f"seed={i}", example.source)
            models[f"{example.name}-{i}"] = catalog_model(family, source, example.options)
        return overlay_for(models)

    def sample(self, c: Checkout, overlay: dict) -> list[Run]:
        workdir = c.scratch / "dry-run"
        shutil.rmtree(workdir, ignore_errors=True)
        run = measure(c.snakemake(workdir, overlay, "-n"), c.logs / "dry-run.log", c.env).check()
        jobs = re.search(r"^total\s+(\d+)", run.log.read_text(), re.M)
        if not jobs or int(jobs.group(1)) < 600:
            raise Failed(f"{run.log}: fewer than 600 jobs planned")
        # What Snakemake takes to start at all: the floor under this figure.
        version = [sys.executable, "-m", "snakemake", "--version"]
        return [run, measure(version, c.logs / "version.log").check()]

    def figures(self, c: Checkout, overlay: dict, samples: list[list[Run]]) -> list[Figure]:
        version = fastest(samples, 1)
        details = {"snakemake_version_s": version.seconds, "version_cpu_s": version.cpu_seconds}
        best, cpu = fastest(samples).seconds, min(runs[0].cpu_seconds for runs in samples)
        return [Figure("snakemake -n, 100 targets", "<= 3 s", best, 3.0, "s", details, cpu)]


def tiny_workdir(c: Checkout) -> tuple[Path, dict, list[str]]:
    """Each family's tiny example, built to its release once."""
    from onnxforge.core.paths import Target

    models = {e.name: catalog_model(f, e.source, e.options) for f, e in examples()}
    releases = [Target(name, "hf", VARIANT).release for name in models]
    workdir = c.scratch / "tiny"
    if not all((workdir / r).exists() for r in releases):
        c.build(workdir, overlay_for(models), releases)
    return workdir, overlay_for(models), releases


class Noop(Measurement):
    """``snakemake`` over built targets: nothing to do."""

    def prepare(self, c: Checkout) -> tuple:
        return tiny_workdir(c)

    def sample(self, c: Checkout, state: tuple) -> list[Run]:
        workdir, overlay, releases = state
        command = c.snakemake(workdir, overlay, *releases)
        run = measure(command, c.logs / "noop.log", c.env).check()
        if "Nothing to be done" not in run.log.read_text():
            raise Failed(f"{run.log}: it ran jobs")
        return [run]

    def figures(self, c: Checkout, state: tuple, samples: list[list[Run]]) -> list[Figure]:
        best, cpu = fastest(samples).seconds, min(runs[0].cpu_seconds for runs in samples)
        return [Figure("no-op rerun (snakemake)", "<= 2 s", best, 2.0, "s", {}, cpu)]


def parity_command(c: Checkout, workdir: Path, family, model: str, out: Path) -> list[str]:
    """The parity rule's command for ``model`` in ``workdir``, writing to ``out``."""
    from onnxforge.core.paths import Target
    from onnxforge.driver import catalog

    overlay = yaml.safe_load((workdir / "overlay.yaml").read_text())
    config = catalog.deep_update(yaml.safe_load((c.repo / "config.yaml").read_text()), overlay)
    settings = catalog.parity_settings(catalog.validate(config), model, "hf", VARIANT)
    t = Target(model, "hf", VARIANT)
    return [
        *(c.python(family.environment), "-m", "onnxforge", "parity", "--family", family.name),
        *("--target", t.name, "--checkpoint", str(workdir / t.download)),
        *("--stage", str(workdir / t.stage), "--export", str(workdir / t.export)),
        *("--settings", json.dumps(settings), "--threads", str(c.threads), "--out", str(out)),
    ]


class ParityMemory(Measurement):
    """Parity's peak RSS on a GPT-OSS of a few hundred MB of float32 weights."""

    model = "bench-gpt-oss-medium"

    def prepare(self, c: Checkout) -> tuple[list[str], int]:
        from onnxforge.core.paths import Target
        from onnxforge.families import FAMILIES

        family = FAMILIES["gpt_oss"]
        overlay = overlay_for({self.model: catalog_model(family, MEDIUM_GPT_OSS)})
        workdir, t = c.scratch / "medium", Target(self.model, "hf", VARIANT)
        if not (workdir / t.export).exists():
            c.build(workdir, overlay, [t.export])
        weights = sum(p.stat().st_size for p in (workdir / t.download).glob("*.safetensors"))
        command = parity_command(c, workdir, family, self.model, c.scratch / "parity-medium")
        return command, weights

    def sample(self, c: Checkout, state: tuple[list[str], int]) -> list[Run]:
        return [measure(state[0], c.logs / "parity-medium.log", c.env).check()]

    def figures(self, c: Checkout, state, samples: list[list[Run]]) -> list[Figure]:
        weights = state[1]
        peak = min(runs[0].peak_rss for runs in samples) / GIB
        limit = (3 * weights + GIB) / GIB
        target = f"<= 3 x {weights / GIB:.2f} + 1 = {limit:.2f} GiB"
        details = {"weight_bytes": weights, "seconds": fastest(samples).seconds}
        return [Figure("parity peak RSS, GPT-OSS", target, peak, limit, "GiB", details)]


class TinyParity(Measurement):
    """Each family's tiny example through the parity step."""

    def prepare(self, c: Checkout) -> list[tuple[str, list[str]]]:
        workdir, _, _ = tiny_workdir(c)
        return [
            (e.name, parity_command(c, workdir, f, e.name, c.scratch / f"parity-{e.name}"))
            for f, e in examples()
        ]

    def sample(self, c: Checkout, commands) -> list[Run]:
        return [
            measure(cmd, c.logs / f"parity-{name}.log", c.env).check() for name, cmd in commands
        ]

    def figures(self, c: Checkout, commands, samples: list[list[Run]]) -> list[Figure]:
        figures = []
        for i, (name, _) in enumerate(commands):
            best = fastest(samples, i)
            cpu = min(runs[i].cpu_seconds for runs in samples)
            figure = Figure(f"parity step, {name}", "<= 60 s", best.seconds, 60.0, "s", {}, cpu)
            figures.append(figure)
        return figures


class MaxTextVsGenAI(Measurement):
    """Stage + export of a 45M-parameter Llama (maxtext family), against ONNX Runtime GenAI's
    model builder on the same files (fp32, CPU)."""

    model, options = "bench-llama-45m", {"model": "llama2-7b"}

    def __init__(self, genai_python: str | None):
        self.genai_python = genai_python

    def prepare(self, c: Checkout) -> dict[str, tuple[list[str], Path]]:
        """Each command, and the folder it writes (removed before each run)."""
        from onnxforge.core.paths import Target
        from onnxforge.families import FAMILIES

        family = FAMILIES["maxtext"]
        overlay = overlay_for({self.model: catalog_model(family, LLAMA_45M, self.options)})
        workdir, t = c.scratch / "llama-45m", Target(self.model, "hf", VARIANT)
        download = workdir / t.download
        if not download.exists():
            c.build(workdir, overlay, [t.download])
        python = [c.python(family.environment), "-m", "onnxforge"]
        stage, export = c.scratch / "llama-45m-stage", c.scratch / "llama-45m-export"
        commands = {
            "stage": (
                [
                    *(*python, "stage", "--family", family.name, "--checkpoint", str(download)),
                    *("--options", json.dumps(self.options), "--threads", str(c.threads)),
                    *("--out", str(stage)),
                ],
                stage,
            ),
            "export": (
                [
                    *(*python, "export", "--family", family.name, "--stage", str(stage)),
                    *("--dtype", "float32", "--opset", "23", "--threads", str(c.threads)),
                    *("--out", str(export)),
                ],
                export,
            ),
            # What every MaxText step pays before it starts: importing MaxText's model stack
            # (it imports transformers, torch and TensorFlow with it). Stage and export pay it
            # once each: twice this is the floor under our side.
            "maxtext_import": ([python[0], "-c", MAXTEXT_IMPORT], None),
        }
        if self.genai_python:
            # The same files plus a tokenizer, which the builder needs and a checkpoint may lack.
            hf = c.scratch / "llama-45m-hf"
            if not (hf / "tokenizer.json").exists():
                hf.mkdir(parents=True, exist_ok=True)
                for f in download.iterdir():
                    if f.suffix in (".json", ".safetensors") and not (hf / f.name).exists():
                        (hf / f.name).symlink_to(f)
                vocab = json.loads((download / "config.json").read_text())["vocab_size"]
                tokenizer = [self.genai_python, "-c", TOKENIZER, str(hf), str(vocab)]
                measure(tokenizer, c.logs / "tokenizer.log").check()
            out = c.scratch / "llama-45m-genai"
            builder = [self.genai_python, "-m", "onnxruntime_genai.models.builder"]
            options = ["-p", "fp32", "-e", "cpu", "-c", f"{out}-cache"]
            commands["genai"] = ([*builder, "-i", str(hf), "-o", str(out), *options], out)
        return commands

    def sample(self, c: Checkout, commands: dict[str, tuple[list[str], Path]]) -> list[Run]:
        runs = []
        for name, (command, out) in commands.items():
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            env = c.env if name != "genai" else None
            runs.append(measure(command, c.logs / f"llama-45m-{name}.log", env).check())
        return runs

    def figures(self, c: Checkout, commands, samples: list[list[Run]]) -> list[Figure]:
        ours = min(samples, key=lambda runs: runs[0].seconds + runs[1].seconds)[:2]
        seconds = sum(r.seconds for r in ours)
        cpu = sum(r.cpu_seconds for r in ours)
        imports = fastest(samples, 2)
        details = {
            "stage_s": ours[0].seconds,
            "export_s": ours[1].seconds,
            "seconds": seconds,
            "cpu_s": cpu,
            "maxtext_import_s": imports.seconds,
            "maxtext_import_cpu_s": imports.cpu_seconds,
        }
        if "genai" not in commands:
            details["genai"] = "not measured: pass --genai-python"
            return [Figure("stage + export, Llama 45M", "(no GenAI)", seconds, 0.0, "s", details)]
        genai = fastest(samples, 3)
        details.update(
            genai_s=genai.seconds,
            genai_cpu_s=genai.cpu_seconds,
            floor_ratio=2 * imports.seconds / genai.seconds,  # two MaxText imports, nothing else
        )
        ratio, cpu_ratio = seconds / genai.seconds, cpu / genai.cpu_seconds
        name = "stage + export vs GenAI builder"
        return [Figure(name, "<= 1.5 x", ratio, 1.5, "x", details, cpu_ratio)]


def shown(figure: Figure) -> str:
    cpu = f" (CPU {figure.cpu:.2f} {figure.unit})" if figure.cpu is not None else ""
    return f"{figure.value:.2f} {figure.unit}{cpu}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    names = ("dry_run", "noop", "parity_memory", "tiny_parity", "maxtext_vs_genai")
    p.add_argument("--only", nargs="+", choices=names, default=list(names))
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; the minimum counts")
    p.add_argument("--scratch", type=Path, default=Path("/tmp/onnxforge-overhead"))
    p.add_argument("--repo", type=Path, default=HERE, help="the checkout to measure")
    p.add_argument("--compare", type=Path, help="another checkout, measured in the same runs")
    p.add_argument("--genai-python", help="a Python with onnxruntime-genai 0.18 (see above)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    sys.path.insert(0, str(args.repo.resolve() / "workflow"))  # its catalog, layout, families
    measurements = {
        "dry_run": DryRun(),
        "noop": Noop(),
        "parity_memory": ParityMemory(),
        "tiny_parity": TinyParity(),
        "maxtext_vs_genai": MaxTextVsGenAI(args.genai_python),
    }

    checkouts = {}
    if args.compare:
        checkouts["baseline"] = Checkout(args.compare.resolve(), args.scratch / "baseline")
    checkouts["measured"] = Checkout(args.repo.resolve(), args.scratch / "measured")
    load = {"start": os.getloadavg()}
    results: dict[str, dict[str, Figure]] = {label: {} for label in checkouts}
    failed = []
    for name in args.only:
        measurement = measurements[name]
        try:
            states = {label: measurement.prepare(c) for label, c in checkouts.items()}
            samples: dict[str, list] = {label: [] for label in checkouts}
            for i in range(args.repeat):
                for label, c in checkouts.items():  # alternating: both see the same load
                    load_now = os.getloadavg()[0]
                    print(f"{name} {i + 1}/{args.repeat} ({label}), load {load_now:.1f}")
                    samples[label].append(measurement.sample(c, states[label]))
        except Failed as err:
            print(f"{name} failed: {err}", file=sys.stderr)
            failed.append(name)
            continue
        for label, c in checkouts.items():
            for figure in measurement.figures(c, states[label], samples[label]):
                results[label][figure.name] = figure
    load["end"] = os.getloadavg()

    cores = os.cpu_count()
    start, end = (", ".join(f"{x:.1f}" for x in load[k]) for k in ("start", "end"))
    print(f"\n{cores} cores; load average (1, 5, 15 min) {start} at the start, {end} at the end;")
    print(f"each figure the minimum of {args.repeat} runs; met is judged on wall time\n")
    columns = ["figure", *(["baseline"] if args.compare else []), "measured", "target", "met"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for name, figure in results["measured"].items():
        values = [shown(r[name]) if name in r else "-" for r in results.values()]
        met = "yes" if figure.met else "no"
        print("| " + " | ".join([name, *values, figure.target, met]) + " |")
    if failed:
        print(f"\nnot measured (failed): {', '.join(failed)}")
    if args.json:
        record = {"cores": cores, "load_average": load, "repeat": args.repeat}
        for label, figures in results.items():
            record[label] = {
                "repo": str(checkouts[label].repo),
                "figures": [{**vars(f), "met": f.met} for f in figures.values()],
            }
        record["failed"] = failed
        args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0 if not failed and all(f.met for f in results["measured"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
