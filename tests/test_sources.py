import pytest

from onnxforge.cli import main
from onnxforge.errors import InputError
from onnxforge.outputs import hash_tree
from onnxforge.sources import download, parse_source


def test_synthetic_checkpoints_are_deterministic(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        download("synthetic://gpt_oss?seed=7&num_hidden_layers=1", tmp_path / name)
    assert hash_tree(tmp_path / "a") == hash_tree(tmp_path / "b")
    (tmp_path / "c").mkdir()
    download("synthetic://gpt_oss?seed=8&num_hidden_layers=1", tmp_path / "c")
    assert hash_tree(tmp_path / "a") != hash_tree(tmp_path / "c")


def test_local_directory_is_copied_with_hashes(tiny_checkpoint, tmp_path):
    out = tmp_path / "download"
    assert main(["download", "--source", f"file://{tiny_checkpoint}", "--out", str(out)]) == 0
    assert hash_tree(out).items() >= hash_tree(tiny_checkpoint).items()


def test_parse_source_options():
    source = parse_source("synthetic://gpt_oss?seed=3&init_std=0.5&tie_word_embeddings=true")
    assert source.options == {"seed": 3, "init_std": 0.5, "tie_word_embeddings": True}


@pytest.mark.parametrize(
    "uri,message",
    [
        ("s3://bucket/model", "unsupported scheme 's3'"),
        ("synthetic://gpt_oss?hidden=3", "unknown parameter"),
        ("synthetic://llama9", "unknown model family 'llama9'"),
    ],
)
def test_bad_sources(uri, message, tmp_path):
    with pytest.raises(InputError, match=message):
        download(uri, tmp_path)


def test_missing_directory_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "download"
    assert main(["download", "--source", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_parse_hub_sources():
    assert parse_source("hf://openai/gpt-oss-20b@main").options == {"revision": "main"}
    assert parse_source("hf://openai/gpt-oss-20b").location == "openai/gpt-oss-20b"
    with pytest.raises(InputError, match=r"expected hf://org/repo\[@revision\]"):
        parse_source("hf://just-a-name")


@pytest.mark.parametrize(
    "revision",
    [
        "not a sha!",
        "main..dev",
        "v1^",
        "~1",
        "a:b",
        "x?",
        "x*",
        "br[1]",
        ".hidden",
        "ends.lock",
        "ends/",
        "a//b",
        "@",
        "x@{1}",
        "back\\slash",
        "tab\there",
        "dot.",
    ],
)
def test_a_revision_no_git_ref_can_be_is_refused_at_once(revision):
    with pytest.raises(InputError, match=r"is not a branch, tag or commit sha") as err:
        parse_source(f"hf://openai/gpt-oss-20b@{revision}")
    assert "\n" not in str(err.value) and "hf://openai/gpt-oss-20b@" in str(err.value)


@pytest.mark.parametrize(
    "revision",
    ["main", "v1.0", "refs/pr/1", "6cee5e81ee83917806bbde320786a8fb61efebee", "release/2026-01"],
)
def test_revisions_git_accepts_are_kept(revision):
    assert parse_source(f"hf://openai/gpt-oss-20b@{revision}").options == {"revision": revision}
