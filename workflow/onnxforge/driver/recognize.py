"""A checkpoint outside the catalog -> its catalog entry, for ``onnxforge build SOURCE``.

SOURCE is a local folder (``./my-checkpoint``, ``file:///abs/dir``) or a hub repository
(``hf://org/repo[@revision]``). Its config.json (for the hub: fetched alone, before the DAG
runs) chooses the family and the family's options through each family's ``recognize``: the
families own the table (the maxtext family's is ``architectures.ARCHITECTURES``). Its name in
``results/`` is derived from the source: the same source always gets the same name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxforge.core import paths
from onnxforge.core.errors import InputError
from onnxforge.steps.download.sources import parse_source

LOCAL_CHECKPOINT = "local"
DEFAULT_REVISION = "main"
# Hub files the pipeline never reads: other layouts and formats of the same weights
# (OpenAI's original/ and metal/, PyTorch pickles, GGUF, ONNX). An exclude list rather than an
# include list: tokenizer files and the like come along, whatever they are called.
HUB_EXCLUDE = [
    "original/*", "metal/*", "*.bin", "*.pth", "*.pt", "*.gguf", "*.msgpack", "*.h5",
    "*.ckpt", "consolidated.*", "onnx/*", "*.onnx", "*.onnx_data",
]  # fmt: skip
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAXTEXT_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a file name, never a path
# A --name is one folder under results/ (and results/release/), whose steps' paths, logs and
# temporaries append to it: short enough for any file system's 255-byte names.
NAME_MAX = 100
# results/ entries that are not models' folders
RESERVED = (
    "release", paths.CROSSCHECK_DIR, "logs", Path(paths.INDEX_HTML).name,
    Path(paths.INDEX_JSON).name, f"{Path(paths.SURVEY).name}.md", f"{Path(paths.SURVEY).name}.json",
)  # fmt: skip


@dataclass(frozen=True)
class Recognized:
    """What ``onnxforge build`` made of a source: a catalog model and its one checkpoint."""

    source: str  # as given
    model: str  # its name in results/
    checkpoint: str
    family: str
    options: dict[str, Any]
    entry: dict[str, Any]  # the catalog's checkpoint entry (source, exclude)
    model_type: str
    also: tuple[str, ...] = ()  # other families that recognize it (--family picks one)

    def catalog(self) -> dict[str, Any]:
        """A config overlay (``models:``) with this one model."""
        checkpoints = {self.checkpoint: self.entry}
        model: dict[str, Any] = {"family": self.family, "checkpoints": checkpoints}
        if self.options:
            model["options"] = self.options
        return {"models": {self.model: model}}


def check_name(name: str, catalog_models: Iterable[str] = ()) -> None:
    """A ``--name`` the results tree can hold and that names no catalog model; else one line
    naming --name, what it must be and what to do."""
    rule = (
        "a results/ name is one folder name of letters, digits, '.', '_' and '-', starting with "
        f"a letter or digit, at most {NAME_MAX} characters"
    )
    if not name:
        raise InputError(
            f"--name is empty; {rule}: give one, or leave --name out to name it from SOURCE"
        )
    if "/" in name or "\\" in name:
        raise InputError(f"--name {name!r} holds a path separator; {rule}: give a name without '/'")
    if len(name) > NAME_MAX:
        raise InputError(f"--name is {len(name)} characters long; {rule}: give a shorter name")
    if safe_name(name) != name:
        raise InputError(f"--name {name!r}: {rule}; give such a name")
    if name in RESERVED:
        raise InputError(f"--name {name!r} is reserved for results/{name}; give another name")
    if name in catalog_models:
        raise InputError(
            f"--name {name!r} is a catalog model's name (config.yaml models.{name}); give "
            f"another name, or build the catalog model itself: onnxforge build {name}"
        )


def is_checkpoint_source(text: str) -> bool:
    """Whether ``text`` names a checkpoint rather than a catalog model: hf://, file:// or an
    existing folder."""
    return text.startswith(("hf://", "file://")) or Path(text).is_dir()


def safe_name(text: str) -> str:
    """``text`` as a results/ name (``[A-Za-z0-9][A-Za-z0-9._-]*``); when anything had to
    change, a hash of the original keeps two different texts apart."""
    cleaned = _UNSAFE.sub("-", text).lstrip("._-")
    if cleaned == text:
        return text
    return f"{cleaned or 'checkpoint'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def results_names(source: str) -> tuple[str, str]:
    """The (model, checkpoint) names in results/ for a checkpoint source.

    ``hf://org/repo@rev``: ``org--repo`` / ``rev`` (``main`` when none). A folder: its name
    and the first 8 hex of the sha256 of its absolute path (two folders of one name stay
    apart; the same folder, however it is written, gets the same name) / ``local``. A name
    is cut to NAME_MAX characters (a folder's: before its hash), as --name is held to."""
    parsed = parse_source(source)
    if parsed.scheme == "hf":
        org, name = parsed.location.split("/")
        revision = parsed.options["revision"] or DEFAULT_REVISION
        return safe_name(f"{org}--{name}")[:NAME_MAX], safe_name(revision)[:NAME_MAX]
    folder = Path(parsed.location).resolve()
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:8]
    stem = safe_name(folder.name or "root")[: NAME_MAX - len(digest) - 1]
    return f"{stem}-{digest}", LOCAL_CHECKPOINT


def _folder_config(source: str) -> tuple[dict[str, Any], str, str]:
    """config.json of a local folder, the file's name for messages, and the file:// URI."""
    from onnxforge.core.hf_config import read_config_json

    folder = Path(parse_source(source).location).resolve()
    if not folder.is_dir():
        raise InputError(f"{source}: {folder} is not a folder; give a checkpoint folder")
    return read_config_json(folder), str(folder / "config.json"), f"file://{folder}"


def _hub_config(source: str) -> tuple[dict[str, Any], str]:
    from onnxforge.steps.download.hub import fetch_config

    parsed = parse_source(source)
    return fetch_config(parsed.location, parsed.options["revision"]), f"{source} config.json"


def supported() -> str:
    """What the families recognize, for messages: ``gpt_oss (gpt_oss); gemma, ... (maxtext)``."""
    from onnxforge.families import FAMILIES

    return "; ".join(
        f"{', '.join(f.model_types)} (family {f.name})" for f in FAMILIES.values() if f.model_types
    )


def detect(
    hf_config: dict[str, Any], where: str, family: str | None, forced: dict[str, Any]
) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """The family and its options for a config.json, through every family's ``recognize``
    (only ``family``'s when given), and the other families that would build it too. The
    registry's order breaks such a tie (a family of the model's own before a general one)."""
    from onnxforge.families import FAMILIES, get_family

    candidates = [get_family(family)] if family else list(FAMILIES.values())
    found, refusals = [], []
    for candidate in candidates:
        try:
            options = candidate.recognize(hf_config, where, forced)
        except InputError as err:  # its model_type, but not a config it can build
            refusals.append(err)
            continue
        if options is not None:
            found.append((candidate.name, options))
    if found:
        return (*found[0], tuple(other for other, _ in found[1:]))
    if refusals:
        raise refusals[0]
    model_type = hf_config.get("model_type")
    architectures = hf_config.get("architectures")
    what = f"model_type {model_type!r}"
    if architectures:
        what += f" ({', '.join(map(str, architectures))})"
    scope = f"the {family} family does not build" if family else "no family builds"
    raise InputError(
        f"{where}: {scope} {what}; supported: {supported()}. Where config.json's model_type is "
        "wrong or matches several, force it with --family F (and --maxtext-model M for MaxText)"
    )


def recognize(
    source: str,
    family: str | None = None,
    maxtext_model: str | None = None,
    name: str | None = None,
) -> Recognized:
    """The catalog entry ``onnxforge build`` builds ``source`` as."""
    forced: dict[str, Any] = {}
    if maxtext_model:
        if family not in (None, "maxtext"):
            raise InputError(
                f"--maxtext-model {maxtext_model} is for --family maxtext, not --family {family}"
            )
        if not MAXTEXT_MODEL.fullmatch(maxtext_model):
            raise InputError(
                f"--maxtext-model {maxtext_model!r}: expected the NAME of MaxText's "
                "configs/models/NAME.yml (letters, digits, '.', '_', '-'), e.g. llama2-7b"
            )
        family, forced = "maxtext", {"model": maxtext_model}
    if parse_source(source).scheme == "hf":
        hf_config, where = _hub_config(source)
        entry: dict[str, Any] = {"source": source, "exclude": list(HUB_EXCLUDE)}
    else:
        hf_config, where, uri = _folder_config(source)
        entry = {"source": uri}
    family_name, options, others = detect(hf_config, where, family, forced)
    model, checkpoint = results_names(source)
    if name is not None:
        check_name(name)
        model = name
    model_type = str(hf_config.get("model_type"))
    return Recognized(source, model, checkpoint, family_name, options, entry, model_type, others)
