"""No tokenizer, no GenAI folder, and no failed export: the KV graph is written all the same
(ONNX Runtime and Optimum run it), and the parity report says in one line why GenAI cannot."""

from __future__ import annotations

from onnxforge.core import paths
from onnxforge.families.gpt_oss import FAMILY
from onnxforge.steps.export import genai
from onnxforge.steps.parity.parity import genai_note


def test_a_checkpoint_without_tokenizer_gets_no_genai_folder_and_a_line(tmp_path):
    checkpoint, export = tmp_path / "checkpoint", tmp_path / "export"
    checkpoint.mkdir()
    export.mkdir()
    assert genai.write_folder(FAMILY, None, tmp_path / "stage", checkpoint, export) == []
    assert not list(export.iterdir())
    note = genai_note(export, checkpoint)
    assert note.startswith("no ONNX Runtime GenAI folder: ") and paths.TOKENIZER in note
    (export / paths.GENAI_CONFIG).write_text("{}")
    assert genai_note(export, checkpoint).startswith("ONNX Runtime GenAI runs this folder")
