"""The export folder as ONNX Runtime GenAI reads it: ``genai_config.json`` beside the model,
and the checkpoint's tokenizer files.

``onnxruntime_genai.Model(folder)`` then runs the KV-cache decoder. Where every layer attends
through ONNX Runtime's GroupQueryAttention (``ops: ort``), GenAI keeps one fixed-size buffer per
cache that the op reads and appends to in place (``past_present_share_buffer: true``, as GenAI's
own builder writes); otherwise the cache grows by what each step appends, past and present
separate tensors as ``signature`` defines them (``false``). Widths and token ids come from the
stage's Hugging Face config.json (both families write one) and, where the checkpoint has it,
its generation_config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from onnxforge.core import paths
from onnxforge.core.errors import InputError
from onnxforge.core.hf_config import read_config_json
from onnxforge.core.paths import ONNX_FILE
from onnxforge.families.base import Family, LoadedDecoder
from onnxforge.graph import signature

CONFIG_FILE = paths.GENAI_CONFIG
# What GenAI's tokenizer (onnxruntime-extensions) reads; tokenizer.json is the one it needs.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)
REQUIRED_TOKENIZER = paths.TOKENIZER


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def model_type(family: Family, hf_config: dict[str, Any], source: str) -> str:
    """GenAI's ``model.type`` (which of its drivers runs the graph), as the family says for
    the checkpoint's architecture (maxtext: one file each, families/maxtext/architectures/).
    Refused where it declares none, or knows no such architecture: never a guess."""
    declared = family.genai_type(hf_config, source)
    if declared is None:
        raise InputError(
            f"{source}: ONNX Runtime GenAI has no model type for model_type "
            f"{hf_config.get('model_type')!r}; export it with decoder: full"
        )
    return declared


def genai_config(
    decoder: LoadedDecoder,
    hf_config: dict[str, Any],
    generation: dict,
    share_buffer: bool,
    genai_type: str,
) -> dict:
    """The genai_config.json of a KV-cache export (greedy search by default); ``genai_type``:
    GenAI's ``model.type`` (``model_type``)."""
    eos = _token_ids(generation.get("eos_token_id", hf_config.get("eos_token_id")))
    pad = _token_ids(generation.get("pad_token_id", hf_config.get("pad_token_id")))
    bos = _token_ids(generation.get("bos_token_id", hf_config.get("bos_token_id")))
    # No end-of-sequence token (a synthetic checkpoint): GenAI needs one within the
    # vocabulary; the last id, where generation then stops if it is ever drawn.
    eos = eos or [decoder.vocab_size - 1]
    context = int(hf_config.get("max_position_embeddings") or 4096)
    return {
        "model": {
            "type": genai_type,
            "vocab_size": decoder.vocab_size,
            "context_length": context,
            "bos_token_id": bos[0] if bos else eos[0],
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad[0] if pad else eos[0],
            "decoder": {
                "filename": ONNX_FILE,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": decoder.head_dim,
                "hidden_size": int(hf_config.get("hidden_size", 0)),
                "num_attention_heads": int(hf_config.get("num_attention_heads", 0)),
                "num_key_value_heads": decoder.kv_heads,
                "num_hidden_layers": decoder.num_layers,
                "inputs": {
                    "input_ids": signature.INPUT_IDS,
                    "attention_mask": signature.ATTENTION_MASK,
                    "position_ids": signature.POSITION_IDS,
                    "past_key_names": signature.PAST_KEY.replace("{}", "%d"),
                    "past_value_names": signature.PAST_VALUE.replace("{}", "%d"),
                },
                "outputs": {
                    "logits": signature.LOGITS,
                    "present_key_names": signature.PRESENT_KEY.replace("{}", "%d"),
                    "present_value_names": signature.PRESENT_VALUE.replace("{}", "%d"),
                },
            },
        },
        "search": {
            "do_sample": False,
            "num_beams": 1,
            "max_length": context,
            "min_length": 0,
            "past_present_share_buffer": share_buffer,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_folder(
    family: Family,
    decoder: LoadedDecoder,
    stage_dir: Path,
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    share_buffer: bool = False,
) -> list[str]:
    """Write genai_config.json and copy the tokenizer files into ``out_dir``; returns the
    names written. ``share_buffer``: every layer's cache goes through GroupQueryAttention.
    Without the checkpoint's tokenizer.json nothing is written (GenAI needs it; the graph
    runs in ONNX Runtime and Optimum as it is: parity's report says so); an architecture
    GenAI has no model type for is refused."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / REQUIRED_TOKENIZER).is_file():
        return []
    hf_config = read_config_json(stage_dir)
    genai_type = model_type(family, hf_config, str(Path(stage_dir) / "config.json"))
    generation_path = checkpoint_dir / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.is_file() else {}
    config = genai_config(decoder, hf_config, generation, share_buffer, genai_type)
    (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
    written = [CONFIG_FILE]
    for name in TOKENIZER_FILES:
        if (checkpoint_dir / name).is_file():
            shutil.copyfile(checkpoint_dir / name, Path(out_dir) / name)
            written.append(name)
    return written
