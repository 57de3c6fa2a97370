"""Kill -9 the driver at random moments; does the plain command then finish the build?

Each trial starts the plain command (``snakemake --profile profiles/local TARGET``, as ``make
run`` does) on the tiny GPT-OSS target, in a fresh workdir or in one where the steps before
the chosen one are already built, waits until the chosen step's job has started (its log
file appears), sleeps a random part of that step's usual duration, and sends SIGKILL to the
driver's whole process group (the driver, its job shells and the steps' Python). Then it runs
the same command once more and records:

- whether that rerun succeeded as it was, or needed a manual flag (``--unlock``,
  ``--rerun-incomplete``: the benchmark then adds it, as a person would, and tries again);
- whether it failed (with or without the flags);
- whether any artifact is corrupt after it: a step folder without its manifest.json, a
  manifest whose output hashes do not match the files, a release whose files differ from the
  export's and parity's, a ``*.tmp-*`` left anywhere under results/.

The kills are spread over the steps: trial i aims at step i mod 6 (download, stage, export,
parity, gate, promote). Prints the three counts and one row per trial; ``--json`` writes both.

    PYTHONPATH=workflow .venv/bin/python benchmarks/kill_resume.py [--trials 20] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxforge.core import outputs, paths

REPO = Path(__file__).resolve().parents[1]
TARGET = paths.Target("tiny-gpt-oss", "hf", "f32")
STEPS = ("download", "stage", "export", "parity", "gate", "promote")
# Each step's log (its job has started once the log exists) and output.
LOG = {
    "download": "download.log",
    "stage": "stage.log",
    "export": f"export-{TARGET.variant}.log",
    "parity": f"parity-{TARGET.variant}.log",
    "gate": f"gate-{TARGET.variant}.log",
    "promote": f"promote-{TARGET.variant}.log",
}
OUTPUT = {
    "download": TARGET.download,
    "stage": TARGET.stage,
    "export": TARGET.export,
    "parity": TARGET.parity,
    "gate": TARGET.passed,
    "promote": TARGET.release,
}
FOLDERS = ("download", "stage", "export", "parity", "promote")  # each has a manifest.json
SNAKEMAKE_FILES = {".snakemake_timestamp"}  # Snakemake's own, added after the step's manifest
FLAG_HINTS = {"--unlock": "--unlock", "--rerun-incomplete": "--rerun-incomplete"}


def command(workdir: Path, *extra: str) -> list[str]:
    """The plain command, run on a workdir of its own (the checkout's Snakefile and config)."""
    return [
        sys.executable, "-m", "snakemake", TARGET.release, *extra,
        "--profile", str(REPO / "profiles/local"), "--cores", "2",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(REPO / "config.yaml"),
    ]  # fmt: skip


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "workflow"), env.get("PYTHONPATH")) if p
    )
    return env


def run(workdir: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(workdir, *extra),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def step_seconds(workdir: Path) -> dict[str, float]:
    """Each step's wall time in a finished build, from Snakemake's benchmark files."""
    seconds = {}
    for step, log in LOG.items():
        tsv = Path(workdir) / TARGET.root / "logs" / log.replace(".log", ".benchmark.tsv")
        header, values = tsv.read_text().splitlines()[:2]
        seconds[step] = float(dict(zip(header.split("\t"), values.split("\t"), strict=True))["s"])
    return seconds


def prepare_partial(base: Path, workdir: Path, step: str) -> None:
    """A copy of the finished ``base`` with ``step`` and every later step removed."""
    shutil.copytree(base, workdir, symlinks=True)
    for later in STEPS[STEPS.index(step) :]:
        path = workdir / OUTPUT[later]
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        for log in (LOG[later], LOG[later].replace(".log", ".benchmark.tsv")):
            (workdir / TARGET.root / "logs" / log).unlink(missing_ok=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def started_steps(workdir: Path) -> list[str]:
    return [s for s in STEPS if (workdir / TARGET.root / "logs" / LOG[s]).exists()]


@dataclass
class Kill:
    killed: bool
    during: str  # the last step whose job had started when the kill came
    delay_s: float


def start_and_kill(workdir: Path, step: str, delay_s: float, timeout: float = 600) -> Kill:
    """Start the plain command; SIGKILL its process group ``delay_s`` after ``step`` starts."""
    log = (workdir.parent / f"{workdir.name}.first.log").open("w")
    proc = subprocess.Popen(
        command(workdir), env=environment(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the driver and all it started
    )  # fmt: skip
    step_log = workdir / TARGET.root / "logs" / LOG[step]
    deadline = time.monotonic() + timeout
    while not step_log.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed = False
    if proc.poll() is None:
        time.sleep(delay_s)
        if proc.poll() is None:
            during = (started_steps(workdir) or ["(none)"])[-1]
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
    if not killed:
        during = "(finished first)"
    proc.wait()
    while group_alive(proc.pid):  # the steps' processes die with it, not later
        time.sleep(0.01)
    log.close()
    return Kill(killed, during, round(delay_s, 2))


def corrupt_artifacts(workdir: Path) -> list[str]:
    """What is wrong with the finished-looking artifacts of ``workdir`` (empty: nothing)."""
    problems = []
    for step in FOLDERS:
        folder = workdir / OUTPUT[step]
        if not folder.exists():
            continue
        manifest = folder / outputs.MANIFEST
        if not manifest.exists():
            problems.append(f"{step}: folder without {outputs.MANIFEST}")
            continue
        try:
            recorded = json.loads(manifest.read_text())["outputs"]
        except (ValueError, KeyError) as err:
            problems.append(f"{step}: unreadable manifest ({err})")
            continue
        actual = {
            name: digest
            for name, digest in outputs.hash_tree(folder).items()
            if Path(name).name not in SNAKEMAKE_FILES
        }
        if recorded != actual:
            changed = sorted(set(recorded) ^ set(actual)) or sorted(
                n for n in recorded if recorded[n] != actual.get(n)
            )
            problems.append(f"{step}: manifest outputs do not match the files ({changed[:3]})")
    release = workdir / TARGET.release
    if release.exists():
        for name in paths.RELEASED:
            source = workdir / (
                TARGET.export if name in (paths.ONNX_FILE, paths.DATA_FILE) else TARGET.parity
            )
            mine, theirs = release / name, source / name
            if not mine.exists() or not theirs.exists() or mine.read_bytes() != theirs.read_bytes():
                problems.append(f"release: {name} differs from {source.name}'s")
        passed = workdir / TARGET.passed
        if not passed.exists() or json.loads(passed.read_text()).get("status") != "PASS":
            problems.append("release without a passed gate")
    leftovers = sorted(str(p.relative_to(workdir)) for p in workdir.glob("results/**/*.tmp-*"))
    leftovers += [str(p.relative_to(workdir)) for p in workdir.glob("results/**/.*.tmp-*")]
    if leftovers:
        problems.append(f"left over: {sorted(set(leftovers))[:3]}")
    return problems


@dataclass
class Trial:
    trial: int
    aimed_at: str
    start: str  # fresh or partial (the steps before aimed_at already built)
    killed: bool
    during: str
    delay_s: float
    plain_rerun_ok: bool
    flags_needed: list[str] = field(default_factory=list)
    failed: bool = False
    corrupt: list[str] = field(default_factory=list)
    after_kill: list[str] = field(default_factory=list)  # informational: before the rerun
    rerun_s: float = 0.0
    error: str = ""


def rerun(workdir: Path) -> tuple[bool, list[str], bool, str, float]:
    """The plain command once; then, if it asked for flags, with them (as a person would)."""
    started = time.perf_counter()
    plain = run(workdir)
    seconds = round(time.perf_counter() - started, 1)
    if plain.returncode == 0:
        return True, [], False, "", seconds
    text = plain.stdout + plain.stderr
    flags = [flag for hint, flag in FLAG_HINTS.items() if hint in text]
    if not flags:
        return False, [], True, text[-600:], seconds
    if "--unlock" in flags:
        run(workdir, "--unlock")
    again = run(workdir, *(f for f in flags if f != "--unlock"))
    return False, flags, again.returncode != 0, (again.stdout + again.stderr)[-600:], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where the trials' workdirs go (a tempdir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdirs")
    parser.add_argument("--json", type=Path, help="also write the counts and rows here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="kill-resume-")).absolute()
    root.mkdir(parents=True, exist_ok=True)

    base = root / "base"
    if not (base / TARGET.release / outputs.MANIFEST).exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
        build = run(base)
        if build.returncode != 0:
            print((build.stdout + build.stderr)[-3000:], file=sys.stderr)
            return 1
    seconds = step_seconds(base)
    print("step seconds (uninterrupted):", json.dumps(seconds))

    trials = []
    for index in range(args.trials):
        step = STEPS[index % len(STEPS)]
        start = "fresh" if step == "download" or (index // len(STEPS)) % 2 == 0 else "partial"
        workdir = root / f"trial-{index:02d}"
        shutil.rmtree(workdir, ignore_errors=True)
        if start == "partial":
            prepare_partial(base, workdir, step)
        else:
            workdir.mkdir()
        kill = start_and_kill(workdir, step, rng.uniform(0, seconds[step]))
        after_kill = corrupt_artifacts(workdir)
        ok, flags, failed, error, rerun_s = rerun(workdir)
        trial = Trial(
            index, step, start, kill.killed, kill.during, kill.delay_s, ok, flags, failed,
            corrupt_artifacts(workdir), after_kill, rerun_s, "" if not failed else error,
        )  # fmt: skip
        trials.append(trial)
        print(
            f"trial {index:2d} {step:8s} {start:7s} killed={kill.killed!s:5s} "
            f"during={kill.during:16s} after {kill.delay_s:5.2f}s: "
            f"{'ok' if ok else ('FAILED' if failed else 'needed ' + ' '.join(flags))}"
            f"{' CORRUPT ' + '; '.join(trial.corrupt) if trial.corrupt else ''}"
            f"{' (after kill: ' + '; '.join(after_kill) + ')' if after_kill else ''}",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            (root / f"{workdir.name}.first.log").unlink(missing_ok=True)

    counts = {
        "trials": len(trials),
        "corrupt": sum(bool(t.corrupt) for t in trials),
        "needed_manual_flag": sum(bool(t.flags_needed) for t in trials),
        "failed": sum(t.failed for t in trials),
    }
    print(
        f"\n{counts['trials']} trials: {counts['corrupt']} with corrupt artifacts, "
        f"{counts['needed_manual_flag']} reruns needed a manual flag, "
        f"{counts['failed']} reruns failed (targets: 0, 0, 0)"
    )
    for t in trials:
        if t.error:
            print(f"trial {t.trial} rerun error:\n{t.error}\n")
    if args.json:
        args.json.write_text(
            json.dumps({"counts": counts, "trials": [asdict(t) for t in trials]}, indent=2) + "\n"
        )
    if not args.keep:
        shutil.rmtree(base if args.workdir else root, ignore_errors=True)
    return 0 if not any(counts[k] for k in ("corrupt", "needed_manual_flag", "failed")) else 1


if __name__ == "__main__":
    sys.exit(main())
