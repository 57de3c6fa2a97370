"""Where every result lives: the one definition of the results tree.

The Snakemake rules, the catalog's targets, promote and the tests all format these templates;
nothing else spells a results path.
"""

from __future__ import annotations

from dataclasses import dataclass

RESULTS = "results"
ROOT = RESULTS + "/{model}/{checkpoint}"
DOWNLOAD = ROOT + "/download"
STAGE = ROOT + "/stage"
EXPORT = ROOT + "/export/{variant}"
PARITY = ROOT + "/parity/{variant}"
PASSED = ROOT + "/parity/{variant}.passed.json"
LOGS = ROOT + "/logs"
RELEASE = RESULTS + "/release/{model}/{checkpoint}/{variant}"
SURVEY = RESULTS + "/maxtext-survey"  # .md and .json: MaxText's configs, tiny, tabulated
# Independent implementations of one checkpoint against each other (config `crosschecks`).
CROSSCHECK_DIR = "crosscheck"  # a reserved model name, like "release"
CROSSCHECK = RESULTS + "/" + CROSSCHECK_DIR + "/{name}"
CROSSCHECK_PASSED = CROSSCHECK + ".passed.json"

# Files inside the step folders.
ONNX_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"  # the ONNX model's external data (every weight)
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"  # self-contained: tables and plots inline
GENAI_CONFIG = "genai_config.json"  # a KV export's ONNX Runtime GenAI folder
TOKENIZER = "tokenizer.json"  # the checkpoint's: what GenAI needs besides the graph
LOGITS_FILE = "logits.safetensors"  # parity's JAX and reference logits, for a crosscheck
RELEASED = (ONNX_FILE, DATA_FILE, REPORT_MD, REPORT_JSON, REPORT_HTML)  # what a release copies
INDEX_HTML = RESULTS + "/index.html"  # every target built (rule summary)
INDEX_JSON = RESULTS + "/index.json"

# A target's steps in DAG order, as their logs and benchmarks name them: the rules, `onnxforge
# build`'s verdict and the index's timings all read these names through ``step_log``.
TARGET_STEPS = ("download", "stage", "export", "parity", "gate", "promote")
PER_VARIANT = ("export", "parity", "gate", "promote")  # one log per variant
LOG, BENCHMARK = ".log", ".benchmark.tsv"


def step_log(step: str, suffix: str = LOG) -> str:
    """The template of a step's log (``suffix`` LOG) or benchmark (BENCHMARK) under LOGS."""
    if step not in TARGET_STEPS:
        raise ValueError(f"{step!r} is not one of {TARGET_STEPS}")
    name = f"{step}-{{variant}}" if step in PER_VARIANT else step
    return f"{LOGS}/{name}{suffix}"


def wildcards_of(path: str) -> dict[str, str]:
    """The model, checkpoint (and variant) a results path names; empty for other paths."""
    parts = path.strip("/").split("/")
    if parts[:2] == [RESULTS, "release"] and len(parts) >= 5:
        return dict(zip(("model", "checkpoint", "variant"), parts[2:5], strict=True))
    if parts[:1] != [RESULTS] or len(parts) < 4 or parts[1] in ("release", CROSSCHECK_DIR):
        return {}
    names = {"model": parts[1], "checkpoint": parts[2]}
    if parts[3] in ("export", "parity") and len(parts) >= 5:
        names["variant"] = parts[4].removesuffix(".passed.json")
    return names


@dataclass(frozen=True)
class Target:
    """One model x checkpoint x variant, and the paths of its steps."""

    model: str
    checkpoint: str
    variant: str

    def _format(self, template: str) -> str:
        return template.format(model=self.model, checkpoint=self.checkpoint, variant=self.variant)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.checkpoint}/{self.variant}"

    @property
    def root(self) -> str:
        return self._format(ROOT)

    @property
    def download(self) -> str:
        return self._format(DOWNLOAD)

    @property
    def stage(self) -> str:
        return self._format(STAGE)

    @property
    def export(self) -> str:
        return self._format(EXPORT)

    @property
    def parity(self) -> str:
        return self._format(PARITY)

    @property
    def passed(self) -> str:
        return self._format(PASSED)

    @property
    def report(self) -> str:
        return f"{self.parity}/{REPORT_MD}"

    @property
    def release(self) -> str:
        return self._format(RELEASE)

    def log(self, step: str, suffix: str = LOG) -> str:
        return self._format(step_log(step, suffix))
