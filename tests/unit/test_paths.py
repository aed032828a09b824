"""Outputs the CLI writes are replaced whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from propensity.paths import replace_atomically


def test_a_new_file_replaces_the_old_one_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "latest.json"
    replace_atomically(target, lambda tmp: tmp.write_text("old"))
    replace_atomically(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "send.csv"
    target.write_text("user_id\nu1\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("user_id\n")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, half_then_fail)
    assert target.read_text() == "user_id\nu1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["send.csv"]
