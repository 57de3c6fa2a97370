"""Two clean builds of a target: are they the same bytes?

Builds the target (default: the tiny GPT-OSS release) with the plain command in two fresh
workdirs, or compares two finished workdirs (``--compare A B``), and prints, for every file
of the target's steps (download, stage, export, parity, gate, release), whether both builds
hold the same bytes:

- every file but the manifests, byte for byte: checkpoint files, staged parameters (Orbax),
  ``config.json``, ``model.onnx`` and its external data, ``report.json``, ``report.md``, the
  gate's verdict, the release's copies;
- each ``manifest.json`` through ``outputs.stable_view`` (without its ``volatile`` block:
  creation time, command line, timings), which must be equal;
- the stage manifest's ``values`` block (dtype, shape and sha256 of every parameter's
  values), which must be present and equal whatever the file format does.

Logs and Snakemake's benchmark files hold timings and are not compared.

    PYTHONPATH=workflow .venv/bin/python benchmarks/rebuild_compare.py [--json F]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from onnxforge.core import outputs, paths

REPO = Path(__file__).resolve().parents[1]
TARGET = paths.Target("tiny-gpt-oss", "hf", "f32")


@dataclass
class Row:
    path: str  # relative to the workdir
    kind: str  # bytes, manifest (stable view), values (the stage's)
    identical: bool
    note: str = ""


def step_paths(target: paths.Target) -> list[str]:
    return [
        target.download,
        target.stage,
        target.export,
        target.parity,
        target.passed,
        target.release,
    ]


def _files(workdir: Path, paths: list[str]) -> set[str]:
    found = set()
    for path in paths:
        full = workdir / path
        if full.is_file():
            found.add(path)
        elif full.is_dir():
            found |= {str(p.relative_to(workdir)) for p in full.rglob("*") if p.is_file()}
    return found


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(a: Path, b: Path, target: paths.Target = TARGET) -> list[Row]:
    """One row per file of ``target``'s steps in either build, and one for the stage values."""
    step_files = step_paths(target)
    rows = []
    for name in sorted(_files(a, step_files) | _files(b, step_files)):
        first, second = a / name, b / name
        if not (first.exists() and second.exists()):
            rows.append(Row(name, "bytes", False, "only in " + ("A" if first.exists() else "B")))
        elif Path(name).name == outputs.MANIFEST:
            left, right = (outputs.stable_view(json.loads(p.read_text())) for p in (first, second))
            differing = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
            rows.append(
                Row(name, "manifest", not differing, f"differs in {differing}" if differing else "")
            )
        else:
            same = first.stat().st_size == second.stat().st_size and _sha(first) == _sha(second)
            rows.append(Row(name, "bytes", same))
    stage_manifest = f"{target.stage}/{outputs.MANIFEST}"
    values = []
    for workdir in (a, b):
        path = workdir / stage_manifest
        values.append(json.loads(path.read_text()).get("values") if path.exists() else None)
    if not values[0]:
        rows.append(Row(f"{stage_manifest}#values", "values", False, "no values block"))
    else:
        same = values[0] == values[1]
        note = f"{len(values[0])} parameters"
        rows.append(Row(f"{stage_manifest}#values", "values", same, note))
    return rows


def build(workdir: Path, target: paths.Target) -> None:
    """The plain command (``make run``'s) on a fresh workdir."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "workflow"), env.get("PYTHONPATH")) if p
    )
    command = [
        sys.executable, "-m", "snakemake", target.release,
        "--profile", str(REPO / "profiles/local"), "--cores", "2",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(REPO / "config.yaml"),
    ]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"build in {workdir} failed:\n{(run.stdout + run.stderr)[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=TARGET.name, help="model/checkpoint/variant")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="two workdirs")
    parser.add_argument("--workdir", type=Path, help="where the two builds go (a tempdir)")
    parser.add_argument("--keep", action="store_true", help="keep the two builds")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    target = paths.Target(*args.target.split("/"))
    root = None
    if args.compare:
        a, b = args.compare
    else:
        root = Path(args.workdir or tempfile.mkdtemp(prefix="rebuild-")).absolute()
        a, b = root / "a", root / "b"
        for workdir in (a, b):
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            build(workdir, target)
    rows = compare(a, b, target)
    for row in rows:
        verdict = "identical" if row.identical else "DIFFERENT"
        note = f"  ({row.note})" if row.note else ""
        print(f"{verdict:9s}  {row.kind:8s}  {row.path}{note}")
    different = [row for row in rows if not row.identical]
    print(
        f"\n{target.name}: {len(rows) - len(different)} of {len(rows)} identical "
        f"(files by bytes, manifests by their stable view, the stage's values)"
    )
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    if root is not None and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
