"""What a model family provides. Adding a family is one module and one registry entry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flax import nnx

from onnxforge.errors import InputError
from onnxforge.safetensors_stream import CheckpointReader


def read_config_json(directory: Path) -> dict[str, Any]:
    """A checkpoint's config.json as a dict, or an error naming the file."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise InputError(f"{path}: missing; a checkpoint needs its config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err


def transformers_logits(
    model_class: str, checkpoint_dir: Path, config: Any, inputs: list[np.ndarray], **options
) -> list[np.ndarray]:
    """Logits of transformers' ``model_class`` loaded from the downloaded files (float32, eager
    attention): the independent reference. Missing weights are an error, never random ones."""
    import torch
    import transformers

    model, info = getattr(transformers, model_class).from_pretrained(
        checkpoint_dir,
        config=config,
        dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
        **options,
    )
    if info["missing_keys"]:
        raise InputError(
            f"{checkpoint_dir}: transformers found no weights for "
            f"{sorted(info['missing_keys'])[:5]}; the reference would be random"
        )
    model.eval()
    with torch.no_grad():
        return [
            model(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).logits.float().numpy()
            for ids in inputs
        ]


class Family(Protocol):
    name: str
    environment: str  # which envs/<environment>.lock.txt and config images.<environment>

    def synthesize(self, out_dir: Path, seed: int, overrides: dict[str, Any]) -> None:
        """Write a deterministic tiny checkpoint in the Hugging Face layout (transformers)."""

    def normalize_config(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The config.json stage writes (the reference loads it), from the checkpoint's."""

    def read_config(self, checkpoint_dir: Path) -> Any:
        """The family's config from the checkpoint's ``config.json``."""

    def build(self, config: Any, dtype: Any) -> nnx.Module:
        """The JAX model (parameters zero until loaded); call under ``nnx.eval_shape``."""

    def stage(
        self,
        checkpoint_dir: Path,
        out_dir: Path,
        layers: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        """Write the staged parameters and config.json into ``out_dir`` (a fresh directory);
        ``options`` are the catalog model's family settings. Returns the sha256 of the files
        it hashed while writing them (relative paths), if it did."""

    def load(self, stage_dir: Path, dtype: Any) -> Callable[[Any], Any]:
        """The staged model: ``token ids [batch, sequence] -> logits``, an NNX module or a
        pure function, which jax2onnx exports and ``jax.jit`` runs."""

    def stage_tensors(
        self, reader: CheckpointReader, config: Any
    ) -> list[tuple[tuple[str, ...], dict[tuple[str, ...], Any]]]:
        """(checkpoint tensor names, {parameter path: transform(*tensors)}), read once each."""

    def reference_logits(
        self, checkpoint_dir: Path, config_dir: Path, inputs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Logits of an independent implementation (transformers, PyTorch), float32."""
