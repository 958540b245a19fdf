"""Atomic writes: files renamed into place, folders swapped whole, and a crash between renames recovered."""

from pathlib import Path

import pytest

from edgetl._io import atomic_path, recover_dir, replace_dir, write_json


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "weights.bin").write_text(text)
    return path


def test_replace_dir_swaps_a_complete_folder(tmp_path):
    target = _folder(tmp_path / "model", "old")
    replace_dir(_folder(tmp_path / ".model.partial", "new"), target)
    assert (target / "weights.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    target = _folder(tmp_path / "model", "old")
    staging = _folder(tmp_path / ".model.partial", "new")
    rename = Path.rename

    def killed_after_the_first(self, destination):
        if self == staging:
            raise KeyboardInterrupt  # the process dies with the old folder aside and the new one not yet in
        return rename(self, destination)

    monkeypatch.setattr(Path, "rename", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(staging, target)
    monkeypatch.setattr(Path, "rename", rename)
    assert not target.exists()
    assert (recover_dir(target) / "weights.bin").read_text() == "old"  # whole, never half-deleted
    assert recover_dir(target) == target  # a no-op when nothing needs recovering


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    write_json(tmp_path / "record.json", {"good": True})
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "record.json") as tmp:
        tmp.write_text("{half")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "record.json").read_text().strip().endswith("}")
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
