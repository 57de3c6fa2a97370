"""Rule resources sized by the model: a bigger stage asks for more memory and time, a retry
asks for more again, and a step whose input does not exist yet asks for the fixed part."""

from __future__ import annotations

from onnxforge.driver import resources

MB = 2**20


def _folder(path, sizes_mb):
    path.mkdir()
    for i, size in enumerate(sizes_mb):
        with open(path / f"part{i}", "wb") as f:
            f.truncate(int(size * MB))  # sparse: no disk used
    return path


def test_memory_grows_with_the_staged_weights(tmp_path):
    tiny, big = _folder(tmp_path / "tiny", [0.01]), _folder(tmp_path / "big", [60_000, 5_000])
    fixed, per_mb = resources.MEMORY["export"]
    assert resources.memory_mb("export", tiny) == fixed
    assert resources.memory_mb("export", big) == fixed + per_mb * 65_000
    assert resources.runtime_min("parity", big) > resources.runtime_min("parity", tiny)


def test_stage_is_sized_by_its_largest_file_it_streams(tmp_path):
    shards = _folder(tmp_path / "download", [4_000, 4_000, 1_000])
    fixed, per_mb = resources.MEMORY["stage"]
    assert resources.memory_mb("stage", shards) == fixed + per_mb * 4_000


def test_a_retry_asks_for_half_as_much_again(tmp_path):
    stage = _folder(tmp_path / "stage", [100])
    first = resources.memory_mb("parity", stage)
    assert resources.memory_mb("parity", stage, attempt=2) == int(first * 1.5)
    assert resources.runtime_min("export", stage, attempt=3) == 2 * resources.runtime_min(
        "export", stage
    )


def test_a_folder_not_yet_written_asks_for_the_fixed_part(tmp_path):
    assert resources.memory_mb("export", tmp_path / "missing") == resources.MEMORY["export"][0]
