"""``python -m onnxforge <step>``: the commands the Snakemake rules run.

Each step writes into a temporary directory and renames it into place when complete, with a
manifest of its inputs' hashes and the versions used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from onnxforge.core import outputs, paths, progress, threads
from onnxforge.core.errors import InputError, ParityGateFailed
from onnxforge.families.base import PERTURB_DEFAULT, PERTURB_PARTS


def cmd_download(args: argparse.Namespace) -> None:
    from onnxforge.steps.download.sources import download

    with outputs.atomic_directory(args.out) as tmp:
        record = download(args.source, tmp, include=args.include, exclude=args.exclude)
        hub_hashes = {name: f["sha256"] for name, f in record.get("files", {}).items()}
        for name, uri in (item.split("=", 1) for item in args.extra or []):
            # Another layout of the same weights, which a converter reads (Gemma's Flax one).
            extra = download(uri, tmp / name)
            record.setdefault("extra", {})[name] = extra
            hub_hashes |= {f"{name}/{n}": f["sha256"] for n, f in extra.get("files", {}).items()}
        outputs.write_manifest(tmp, "download", {}, record, known_outputs=hub_hashes)


def cmd_stage(args: argparse.Namespace) -> None:
    options = json.loads(args.options)
    # What it can size: the staged parameters take about what the checkpoint's weights do.
    weights = sum(f.stat().st_size for f in Path(args.checkpoint).glob("*.safetensors"))
    outputs.free_space_for(args.out, weights, args.out)
    with outputs.atomic_directory(args.out) as tmp:
        # sha256 of the files it wrote, where the family hashed them as it wrote them, and
        # of every parameter's values (equal for equal values, whatever the file format)
        staged = args.family.stage(args.checkpoint, tmp, layers=args.layers, options=options)
        outputs.write_manifest(
            tmp,
            "stage",
            {"checkpoint": args.checkpoint},
            {
                "family": args.family.name,
                "layers": args.layers,
                "options": options,
                "values": staged.values,
            },
            known_outputs=staged.files,
        )


def cmd_export(args: argparse.Namespace) -> None:
    from onnxforge.steps.export.export import export

    with outputs.atomic_directory(args.out) as tmp:
        started = time.perf_counter()
        info = export(
            args.family,
            args.stage,
            tmp,
            dtype=args.dtype,
            opset=args.opset,
            decoder=args.decoder,
            ops=args.ops,
            checkpoint_dir=args.checkpoint,
        )
        inputs = {"stage": args.stage}
        if args.checkpoint:  # a kv export copies its tokenizer files
            inputs["checkpoint"] = args.checkpoint
        outputs.write_manifest(
            tmp,
            "export",
            inputs,
            {"family": args.family.name, "export": info},
            volatile={"seconds": round(time.perf_counter() - started, 2)},
        )


def cmd_quantize(args: argparse.Namespace) -> None:
    from onnxforge.steps.export.quantized import quantize_export

    with outputs.atomic_directory(args.out) as tmp:
        started = time.perf_counter()
        info = quantize_export(args.base, tmp, json.loads(args.settings))
        outputs.write_manifest(
            tmp,
            "quantize",
            {"export": args.base},
            {"export": info},
            volatile={"seconds": round(time.perf_counter() - started, 2)},
        )


def cmd_parity(args: argparse.Namespace) -> None:
    from onnxforge.steps.parity import plots
    from onnxforge.steps.parity.parity import ParitySettings, run_parity, write_logits
    from onnxforge.steps.parity.report import render_html, render_markdown

    settings = ParitySettings(**json.loads(args.settings))
    with outputs.atomic_directory(args.out) as tmp:
        started = time.perf_counter()
        if settings.quantize:
            from onnxforge.steps.parity.quantized import run_quantized_parity

            report, logits = run_quantized_parity(
                args.family,
                args.checkpoint,
                args.stage,
                args.export,
                args.base_export,
                settings,
                scratch=tmp,
                threads=args.threads,
            )
        else:
            report, logits = run_parity(
                args.family,
                args.checkpoint,
                args.stage,
                args.export / paths.ONNX_FILE,
                settings,
                threads=args.threads,
            )
        report.update(
            target=args.target,
            onnx_bytes={
                name: (args.export / name).stat().st_size
                for name in (paths.ONNX_FILE, paths.DATA_FILE)
            },
        )
        outputs.write_json(tmp / paths.REPORT_JSON, report)
        write_logits(tmp / paths.LOGITS_FILE, logits)
        (tmp / paths.REPORT_MD).write_text(render_markdown(report))
        (tmp / paths.REPORT_HTML).write_text(render_html(report, plots.images(report)))
        outputs.write_manifest(
            tmp,
            "parity",
            {
                "checkpoint": args.checkpoint,
                "stage": args.stage,
                "export": args.export,
                **({"base_export": args.base_export} if args.base_export else {}),
            },
            {"status": report["status"]},
            volatile={"seconds": round(time.perf_counter() - started, 2)},
        )


def cmd_gate(args: argparse.Namespace) -> None:
    """Fail unless the report passed; the report itself stays for reading either way."""
    from onnxforge.steps.promote import withdraw

    report = json.loads(Path(args.report).read_text())
    if args.release:
        outputs.remove_stale_temporaries(args.release)  # a withdrawal cut short, say
    if report["status"] != "PASS":
        if args.release:
            # An earlier release of this target no longer matches what now fails.
            withdraw(args.release)
        reasons = "\n  ".join(report["failures"])
        html = Path(args.report).with_name(paths.REPORT_HTML)
        plots = f" (and {paths.REPORT_HTML}, with the plots)" if html.exists() else ""
        raise ParityGateFailed(
            f"parity gate failed for {report.get('target', args.report)}:\n  {reasons}\n"
            f"Full report: {Path(args.report).with_name(paths.REPORT_MD)}{plots}"
        )
    outputs.write_json(
        args.out, {"status": "PASS", "report": str(args.report), "summary": report.get("summary")}
    )
    print(f"PASS {report.get('target', '')}: {args.report}")


def cmd_crosscheck(args: argparse.Namespace) -> None:
    from onnxforge.steps import crosscheck

    sides = [
        crosscheck.Side(target, family, Path(parity), Path(download))
        for target, family, parity, download in args.side
    ]
    with outputs.atomic_directory(args.out) as tmp:
        report = crosscheck.run_crosscheck(args.name, sides, json.loads(args.gates))
        outputs.write_json(tmp / paths.REPORT_JSON, report)
        (tmp / paths.REPORT_MD).write_text(crosscheck.render_markdown(report))
        outputs.write_manifest(
            tmp,
            "crosscheck",
            {side.target: side.parity / paths.LOGITS_FILE for side in sides},
            {"status": report["status"]},
        )
    print(f"{report['status']} {report['target']}: {report['agreement']}")


def cmd_promote(args: argparse.Namespace) -> None:
    from onnxforge.steps.promote import StepDirs, promote

    steps = StepDirs(args.download, args.stage, args.export, args.parity)
    with outputs.atomic_directory(args.out) as tmp:
        command = os.environ.get("ONNXFORGE_COMMAND", "")
        promote(args.target, steps, args.passed, tmp, command)


def cmd_perturb(args: argparse.Namespace) -> None:
    """For tests: scale one staged tensor in place (the family says which)."""
    print(args.family.perturb(args.stage, args.part))


def cmd_summary(args: argparse.Namespace) -> None:
    from onnxforge.steps.summary import write_index

    print(write_index(args.results, args.out))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onnxforge", description=__doc__)
    steps = p.add_subparsers(dest="step", required=True)
    steps.add_parser("build", help="build one model's targets (see: onnxforge build --help)")
    steps.add_parser("environments", help="the environments that building TARGETS... needs")

    s = steps.add_parser("download", help="fetch or synthesize a checkpoint")
    s.add_argument("--source", required=True)
    s.add_argument("--include", action="append", help="glob of files to fetch (hf://)")
    s.add_argument("--exclude", action="append", help="glob of files to skip (hf://)")
    s.add_argument("--extra", action="append", help="NAME=SOURCE: also fetch SOURCE into NAME/")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=cmd_download)

    s = steps.add_parser("stage", help="checkpoint -> JAX parameter tree (Orbax)")
    s.add_argument("--family", required=True)
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--layers", type=int, help="keep only the first N layers")
    s.add_argument("--options", default="{}", help="the family's catalog settings, as JSON")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=cmd_stage)

    s = steps.add_parser("export", help="staged model -> ONNX")
    s.add_argument("--family", required=True)
    s.add_argument("--stage", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--dtype", required=True)
    s.add_argument("--opset", type=int, required=True)
    s.add_argument("--decoder", choices=("full", "kv"), default="full")
    s.add_argument(
        "--ops", choices=("plain", "ort"), default="plain", help="onnxforge.graph.lowering"
    )
    s.add_argument("--checkpoint", type=Path, help="kv: the checkpoint (its tokenizer files)")
    s.set_defaults(run=cmd_export)

    s = steps.add_parser("quantize", help="a float KV export -> its int4/int8 variant")
    s.add_argument("--base", type=Path, required=True, help="the float export it quantizes")
    s.add_argument("--settings", required=True, help="the variant's quantize, as JSON")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=cmd_quantize)

    s = steps.add_parser("parity", help="ONNX Runtime vs JAX vs reference; writes the report")
    s.add_argument("--family", required=True)
    s.add_argument("--target", default="")
    s.add_argument("--checkpoint", type=Path, required=True)
    s.add_argument("--stage", type=Path, required=True)
    s.add_argument("--export", type=Path, required=True)
    s.add_argument("--base-export", type=Path, help="a quantized export's float one")
    s.add_argument("--settings", required=True, help="ParitySettings as JSON")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=cmd_parity)

    s = steps.add_parser("gate", help="fail unless a parity report passed its gates")
    s.add_argument("--report", type=Path, required=True)
    s.add_argument("--release", type=Path, help="withdrawn when the gate fails")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=cmd_gate)

    s = steps.add_parser("crosscheck", help="implementations of one checkpoint vs each other")
    s.add_argument("--name", required=True)
    s.add_argument(
        "--side",
        nargs=4,
        action="append",
        required=True,
        metavar=("TARGET", "FAMILY", "PARITY_DIR", "DOWNLOAD_DIR"),
    )
    s.add_argument("--gates", required=True, help="the dtype's gates, as JSON")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=cmd_crosscheck)

    s = steps.add_parser("promote", help="publish a target that passed, with provenance")
    s.add_argument("--target", required=True)
    for step in ("download", "stage", "export", "parity"):
        s.add_argument(f"--{step}", type=Path, required=True, help=f"the target's {step} folder")
    s.add_argument("--passed", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=cmd_promote)

    s = steps.add_parser("perturb", help="tests: scale one staged tensor so parity must fail")
    s.add_argument("--family", required=True)
    s.add_argument("--stage", type=Path, required=True)
    s.add_argument("--part", default=PERTURB_DEFAULT, choices=PERTURB_PARTS)
    s.set_defaults(run=cmd_perturb)

    s = steps.add_parser("summary", help="results/index.html and index.json over every target")
    s.add_argument("--results", type=Path, default=Path(paths.RESULTS))
    s.add_argument("--out", type=Path, required=True, help="the index.html to write")
    s.set_defaults(run=cmd_summary)

    for name, step in steps.choices.items():
        if name in ("stage", "export", "quantize", "parity"):
            step.add_argument("--threads", type=int, help="threads the step may use (the rule's)")
        if name in WITHDRAWING:
            step.add_argument(
                "--withdraw",
                type=Path,
                action="append",
                default=[],
                metavar="RELEASE",
                help="a release folder (or a folder of them) made from what this step remakes: "
                "withdrawn when the step starts, so a rebuild that fails leaves no release",
            )
    return p


# The steps a release depends on: each withdraws it when it starts (its rule says which).
WITHDRAWING = ("download", "stage", "export", "quantize", "parity")


def withdraw_releases(releases: list[Path], step: str) -> None:
    from onnxforge.steps.promote import withdraw

    for release in releases:
        for gone in withdraw(release):
            print(f"withdrawn (its {step} step is being remade): {gone}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["environments"]:  # for `make run`: which environments the targets need
        import yaml

        from onnxforge.driver.catalog import environments_for

        print(" ".join(environments_for(yaml.safe_load(Path("config.yaml").read_text()), argv[1:])))
        return 0
    if argv[:1] == ["build"]:
        from onnxforge.driver.build import main as build

        return build(argv[1:])
    args = parser().parse_args(argv)
    threads.use(getattr(args, "threads", None))
    out = getattr(args, "out", None) or getattr(args, "stage", None)
    progress.begin(args.step, "/".join(paths.wildcards_of(str(out or "")).values()))
    try:
        withdraw_releases(getattr(args, "withdraw", []), args.step)
        if hasattr(args, "family"):  # every step is handed the family object, not its name
            from onnxforge.families import get_family

            args.family = get_family(args.family)
        args.run(args)
    except KeyboardInterrupt:
        print(f"onnxforge {args.step}: {outputs.INTERRUPTED}", file=sys.stderr)
        return 130
    except InputError as err:
        print(f"onnxforge {args.step}: error: {err}", file=sys.stderr)
        return 2
    except ParityGateFailed as err:
        print(f"onnxforge {args.step}: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, read-only, ...: the file and what to do, one line
        line = outputs.describe_os_error(err, where=out)
        print(f"onnxforge {args.step}: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
