"""``onnxforge build SOURCE...``: build and verify checkpoints into ./results (the container
entrypoint).

SOURCE is a catalog model (``tiny-gpt-oss``), a local checkpoint folder (``./my-checkpoint``,
``file:///abs/dir``) or a hub repository (``hf://org/repo[@revision]``). A checkpoint outside
the catalog gets a catalog entry from its config.json (``recognize.py``), written to
``results/<model>/catalog-entry.yaml`` and passed to Snakemake as one more config file. It
runs the Snakemake workflow shipped with the package, in the current directory, and ends with
each target's verdict, release folder and report; exit status 0 only if every gate held.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

from onnxforge.core import checkout, outputs, paths, providers, runlock
from onnxforge.core.errors import InputError
from onnxforge.driver import catalog, recognize

WORKFLOW = checkout.ROOT
CATALOG_ENTRY = "catalog-entry.yaml"  # results/<model>/: how `onnxforge build` saw a source


def _config(extra: list[Path]) -> dict:
    config = yaml.safe_load(checkout.CONFIG_YAML.read_text())
    for path in extra:
        catalog.deep_update(config, yaml.safe_load(Path(path).read_text()))
    return catalog.validate(config, source="config")


def model_targets(
    config: dict, model: str, variants: list[str] | None = None
) -> list[catalog.Target]:
    """``variants`` of every checkpoint of the model; without: the model's targets named in
    ``targets``, else every checkpoint x every variant that needs no GPU and is not quantized
    (int4/int8 are asked for by name: their quality gate judges trained weights, and a test
    checkpoint's are random)."""
    catalog.model_entry(config, model)
    checkpoints = config["models"][model]["checkpoints"]
    if variants:
        named = [
            {"model": model, "checkpoint": c, "variant": v} for c in checkpoints for v in variants
        ]
    else:
        named = [t for t in config["targets"] if t["model"] == model] or [
            {"model": model, "checkpoint": c, "variant": v}
            for c in checkpoints
            for v, entry in config["variants"].items()
            if providers.gpus_for(entry["provider"]) == 0 and "quantizes" not in entry
        ]
    return [catalog.lookup_target(config, **t) for t in named]


def catalog_listing(config: dict) -> str:
    lines = ["models in the catalog:"]
    for name, model in config["models"].items():
        checkpoints = ", ".join(model["checkpoints"])
        lines.append(f"  {name:<24} family {model['family']:<10} checkpoints: {checkpoints}")
    return "\n".join(lines)


def write_catalog_entry(recognized: recognize.Recognized) -> Path:
    """The generated entry, under results/ for the user to read or copy into a config."""
    path = Path(paths.RESULTS) / recognized.model / CATALOG_ENTRY
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    header = f"# `onnxforge build {recognized.source}`: config.json's model_type "
    header += f"{recognized.model_type!r} -> family {recognized.family}\n"
    tmp.write_text(header + yaml.safe_dump(recognized.catalog(), sort_keys=False))
    os.replace(tmp, path)
    return path


def _describe(found: recognize.Recognized) -> str:
    chosen = f"family {found.family}"
    if found.options.get("model"):
        chosen += f", MaxText model {found.options['model']}"
    if found.also:
        chosen += f"; also {', '.join(found.also)}: --family to choose"
    return (
        f"onnxforge build: {found.source}: model_type {found.model_type!r} -> {chosen}; "
        f"results name {found.model}/{found.checkpoint}"
    )


def check_environment(config: dict, model: str, snakemake_args: list[str]) -> None:
    """A family whose jobs run in another environment than the driver's needs it here (or
    images: --sdm apptainer); say so now, in one line, rather than fail every job of it."""
    from onnxforge.families import get_family

    family = get_family(config["models"][model]["family"])
    if family.environment == "jax" or {"--sdm", "--software-deployment-method"} & set(
        snakemake_args
    ):
        return
    if checkout.local_python(family.environment).exists():
        return
    image = os.environ.get("ONNXFORGE_IMAGE")
    where = f"the onnxforge-{image} image" if image else f"{WORKFLOW}"
    raise InputError(
        f"{model}: a {family.name}-family model, whose jobs run in the {family.environment} "
        f"environment, which {where} lacks; build it in a checkout with `make "
        f"env-{family.environment}` and run `onnxforge build` there, or run every step in its "
        "image: `onnxforge build SOURCE -- --sdm apptainer`"
    )


def _fresh(path: Path, started: float) -> bool:
    return path.exists() and path.stat().st_mtime >= started


def error_line(log: Path) -> str:
    """A step's one line of why it stopped (``onnxforge STEP: error: WHY``, its last), as the
    log has it: WHY; empty where it has none (a crash prints a traceback instead)."""
    lines = log.read_text(errors="replace").splitlines()
    found = [line for line in lines if line.startswith("onnxforge ") and ": error: " in line]
    return found[-1].split(": error: ", 1)[1] if found else ""


def verdict(target: catalog.Target, started: float, snakemake_ok: bool) -> tuple[str, str]:
    """PASS, FAIL (a gate) or NOT BUILT (a step failed, or never ran), and why.

    Read from the files this run wrote (modified since ``started``): a step that Snakemake
    reran deletes its old output first, but not what later steps made from it."""
    release, passed = Path(target.release), Path(target.passed)
    report = Path(target.parity) / paths.REPORT_JSON
    logs = {step: Path(target.log(step)) for step in paths.TARGET_STEPS}
    ran = [log for log in logs.values() if _fresh(log, started)]
    if release.exists() and passed.exists() and (snakemake_ok or _fresh(passed, started)):
        return "PASS", ""
    if _fresh(report, started):
        failures = json.loads(report.read_text()).get("failures") or []
        if failures:
            return "FAIL", "; ".join(failures[:2]) + (" ..." if len(failures) > 2 else "")
    if release.exists() and passed.exists() and not ran:
        return "PASS", "(up to date)"
    if ran:
        step = next(step for step, log in logs.items() if log == ran[-1])
        why = error_line(ran[-1])
        where = f"; log {ran[-1]}" if why else f"see {ran[-1]}"
        return "NOT BUILT", f"the {step} step failed: {why}{where}"
    return "NOT BUILT", "Snakemake stopped before it ran (see its messages above)"


def print_verdicts(targets: list[catalog.Target], started: float, snakemake_ok: bool) -> bool:
    """Each target's verdict, release and report; whether every one passed."""
    print(f"\nonnxforge build: {len(targets)} target(s)")
    all_passed = True
    for target in targets:
        status, why = verdict(target, started, snakemake_ok)
        all_passed &= status == "PASS"
        print(f"  {status:<9}  {target.name}  {why}".rstrip())
        if status == "PASS":
            print(f"             release: {target.release}")
        if Path(target.report).exists():
            print(f"             report:  {target.report}")
    return all_passed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="onnxforge build",
        usage="onnxforge build SOURCE... [options] [-- SNAKEMAKE_ARGS...]",
        description=textwrap.fill(
            "Build and verify ONNX models into ./results. SOURCE: a catalog model (below), a "
            "checkpoint folder (./my-checkpoint, file:///abs/dir) or a hub repository "
            "(hf://org/repo[@revision], HF_TOKEN if it is gated). A checkpoint's family "
            "(and MaxText model) is chosen from its config.json; "
            f"supported: {recognize.supported()}.",
            width=88,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE")
    p.add_argument(
        "--variant",
        action="append",
        help="a config variant (repeatable); default: the model's targets in config.yaml, else "
        "every variant that needs no GPU but the quantized ones (int4-kv, int8-kv, ...: ask "
        "for them)",
    )
    p.add_argument("--family", help="build a checkpoint as this family (gpt_oss, maxtext)")
    p.add_argument("--maxtext-model", help="MaxText's configs/models/NAME.yml (implies maxtext)")
    p.add_argument("--name", help="the results/ name of a checkpoint (default: from SOURCE)")
    p.add_argument("--cores", default="all")
    p.add_argument("--configfile", type=Path, action="append", default=[])
    return p


def check_writable(directory: Path) -> None:
    """results/ (and Snakemake's .snakemake/) can be written in ``directory``: a read-only
    folder is one line now, before anything runs."""
    results = Path(directory) / paths.RESULTS
    probe = results if results.is_dir() else Path(directory)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(probe)) from None


def holding_build(targets: list[catalog.Target]) -> str | None:
    """When another live Snakemake run in this folder (another ``onnxforge build``, say) holds
    Snakemake's lock on files of ``targets``: a line saying so; else None. A lock that no live
    run holds is stale and left for the workflow to remove (core/runlock.py)."""
    locks = Path(".snakemake") / runlock.LOCKS
    if not locks.is_dir():
        return None
    live = runlock.live_drivers()
    if not live:
        return None
    roots = {}
    for target in targets:
        name = f"{target.model}/{target.checkpoint}"
        roots[target.root] = roots[str(Path(target.release).parent)] = name
    for lock in sorted(locks.glob("*.lock")):
        try:
            keys = lock.read_text().splitlines()
        except OSError:
            continue  # removed meanwhile: that run ended
        for key in (k.strip() for k in keys):
            key = os.path.relpath(key) if os.path.isabs(key) else key
            for root, name in roots.items():
                if key == root or key.startswith(f"{root}/"):
                    pid = live[0][0].get("pid")
                    return (
                        f"another build in {os.getcwd()} (process {pid}) is building {name} now; "
                        "wait for it to end, then run the same command again (it resumes "
                        "where that one left off)"
                    )
    return None


def run_snakemake(command: list[str]) -> int:
    """Snakemake's exit status; on Ctrl-C (which Snakemake gets too: it stops its jobs and
    removes its lock) it is given time to end cleanly, then KeyboardInterrupt goes on."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=60)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        raise


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"\nonnxforge build: {outputs.INTERRUPTED}", file=sys.stderr)
        return 130
    except OSError as err:  # a read-only folder, a full disk: the file and what to do
        print(f"onnxforge build: error: {outputs.describe_os_error(err)}", file=sys.stderr)
        return 2


def _check_name(name: str, sources: list[str], config: dict) -> None:
    recognize.check_name(name, config["models"])
    checkpoints = [s for s in sources if s not in config["models"]]
    if not checkpoints:
        raise InputError(
            f"--name {name!r} names a checkpoint folder or hf:// source, and {sources[0]!r} is a "
            "catalog model (its name is its own); leave --name out"
        )
    if len(checkpoints) > 1:
        raise InputError(
            f"--name {name!r} is for one checkpoint, and {len(checkpoints)} are given "
            f"({', '.join(checkpoints)}); build them one at a time, each with its --name"
        )


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    snakemake_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = parser()
    try:
        config = _config([])
    except InputError as err:
        print(f"onnxforge build: error: {err}", file=sys.stderr)
        return 2
    p.epilog = catalog_listing(config)
    args = p.parse_args(argv)
    if not args.sources:
        p.print_help()
        return 2
    targets: list[catalog.Target] = []
    overlays: list[Path] = []
    try:
        config = _config(args.configfile)
        if args.name is not None:
            _check_name(args.name, args.sources, config)
        check_writable(Path.cwd())
        for source in args.sources:
            if source not in config["models"]:
                if not recognize.is_checkpoint_source(source):
                    raise InputError(
                        f"{source!r} is neither a catalog model nor a checkpoint folder nor "
                        "hf://org/repo[@revision]; give one of those"
                    )
                found = recognize.recognize(source, args.family, args.maxtext_model, args.name)
                print(_describe(found))
                overlays.append(write_catalog_entry(found))
                catalog.deep_update(config, found.catalog())
                config = catalog.validate(config, source=str(overlays[-1]))
                source = found.model
            check_environment(config, source, snakemake_args)
            targets += model_targets(config, source, args.variant)
        if held := holding_build(targets):
            raise InputError(held)
    except InputError as err:
        print(f"onnxforge build: error: {err}", file=sys.stderr)
        return 2
    configfiles = [str(checkout.CONFIG_YAML), *map(str, args.configfile), *map(str, overlays)]
    keep_going = [] if {"-k", "--keep-going"} & set(snakemake_args) else ["--keep-going"]
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(checkout.SNAKEFILE),
        "--directory", os.getcwd(), "--cores", args.cores,
        *(t.release for t in targets), *keep_going, *snakemake_args,
        "--configfile", *configfiles,
    ]  # fmt: skip
    started = time.time()
    returncode = run_snakemake(command)
    if returncode and (held := holding_build(targets)):  # it started meanwhile
        print(f"onnxforge build: error: {held}", file=sys.stderr)
        return 2
    all_passed = print_verdicts(targets, started, returncode == 0)
    if returncode:
        return returncode
    return 0 if all_passed else 1
