"""``onnxforge build MODEL``: build one catalog model's targets (the container entrypoint).

``docker run --rm -v "$PWD/results:/work/results" IMAGE tiny-gpt-oss`` lands here: it runs the
Snakemake workflow shipped with the package for that model's targets, in the current directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from onnxforge import catalog
from onnxforge.errors import InputError

WORKFLOW = Path(os.environ.get("ONNXFORGE_WORKFLOW", Path(__file__).parents[2]))


def _config(extra: list[Path]) -> dict:
    config = yaml.safe_load((WORKFLOW / "config.yaml").read_text())
    for path in extra:
        catalog.deep_update(config, yaml.safe_load(Path(path).read_text()))
    return catalog.validate(config, source="config")


def model_targets(config: dict, model: str) -> list[catalog.Target]:
    """The model's targets named in ``targets``, else every checkpoint x variant."""
    catalog.model_entry(config, model)
    named = [t for t in config["targets"] if t["model"] == model]
    if not named:
        named = [
            {"model": model, "checkpoint": c, "variant": v}
            for c in config["models"][model]["checkpoints"]
            for v in config["variants"]
        ]
    return [catalog.lookup_target(config, **t) for t in named]


def catalog_listing(config: dict) -> str:
    lines = ["models in the catalog:"]
    for name, model in config["models"].items():
        checkpoints = ", ".join(model["checkpoints"])
        lines.append(f"  {name:<24} family {model['family']:<10} checkpoints: {checkpoints}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="onnxforge build",
        description="Build and verify one model's ONNX targets into ./results.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", help="a model name from the catalog")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--configfile", type=Path, action="append", default=[])
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="passed to snakemake")
    try:
        config = _config([])
    except InputError as err:
        print(f"onnxforge build: error: {err}", file=sys.stderr)
        return 2
    parser.epilog = catalog_listing(config)
    args = parser.parse_args(argv)
    if args.model is None:
        parser.print_help()
        return 2
    try:
        config = _config(args.configfile)
        targets = model_targets(config, args.model)
    except InputError as err:
        print(f"onnxforge build: error: {err}\n{catalog_listing(config)}", file=sys.stderr)
        return 2
    configfiles = [str(WORKFLOW / "config.yaml"), *map(str, args.configfile)]
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(WORKFLOW / "Snakefile"),
        "--directory", os.getcwd(), "--cores", args.cores, *args.snakemake_args,
        *(t.release for t in targets),
        "--configfile", *configfiles,
    ]  # fmt: skip
    result = subprocess.run(command, check=False)
    for target in targets:
        report = Path(target.root) / "parity" / target.variant / "report.md"
        if report.exists():
            print(f"report: {report}")
        if Path(target.release).exists():
            print(f"release: {target.release}")
    return result.returncode
