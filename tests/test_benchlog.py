"""Results CSVs: one schema per file (its header), rows that name their commit, and rows from a
tree with uncommitted changes only when asked for, marked dirty."""

import csv

import pytest

from phide.errors import PhideError
from phide.tools.benchlog import append_csv

COLUMNS = ["git_sha", "dirty", "config", "wall", "vs_a"]


def _read(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_rows_keep_the_schema_and_missing_values_are_blank(tmp_path):
    path = tmp_path / "r" / "bench.csv"
    append_csv(path, [{"git_sha": "abc", "dirty": 0, "config": "a", "wall": 1},
                      {"git_sha": "abc", "dirty": 0, "config": "b", "wall": 2, "vs_a": 0.5}], COLUMNS)
    append_csv(path, [{"git_sha": "def", "dirty": 0, "config": "c", "wall": 3}], COLUMNS)
    append_csv(path, [], COLUMNS)
    assert _read(path) == [COLUMNS, ["abc", "0", "a", "1", ""], ["abc", "0", "b", "2", "0.5"], ["def", "0", "c", "3", ""]]


def test_another_schema_or_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bench.csv"
    append_csv(path, [{"git_sha": "abc", "dirty": 0, "config": "a"}], COLUMNS)
    before = path.read_text()
    with pytest.raises(PhideError, match="another schema"):
        append_csv(path, [{"git_sha": "abc", "dirty": 0}], COLUMNS[:2])
    with pytest.raises(PhideError, match="repeats"):
        append_csv(path, [{"git_sha": "abc", "dirty": 0, "repeats": 3}], COLUMNS)
    assert path.read_text() == before  # nothing half-written


def test_dirty_rows_need_allow_dirty_and_stay_marked(tmp_path):
    path = tmp_path / "bench.csv"
    dirty = {"git_sha": "abc", "dirty": 1, "config": "a", "wall": 1}
    with pytest.raises(PhideError, match="uncommitted changes"):
        append_csv(path, [dirty], COLUMNS)
    assert not path.exists()
    append_csv(path, [dirty], COLUMNS, allow_dirty=True)
    assert _read(path)[1][:2] == ["abc", "1"]


def test_appending_results_leaves_the_tree_clean(tmp_path, monkeypatch):
    """A results row must not make the next measurement's tree dirty: changes under
    profiling/results/ do not count, any other tracked change does."""
    import subprocess

    from phide.tools import benchlog

    repo = tmp_path / "repo"
    (repo / "profiling" / "results").mkdir(parents=True)
    (repo / "profiling" / "results" / "bench.csv").write_text("a\n")
    (repo / "code.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    monkeypatch.setattr(benchlog, "ROOT", repo)
    assert benchlog.git_state()[1] is False
    (repo / "profiling" / "results" / "bench.csv").write_text("a\nb\n")
    assert benchlog.git_state()[1] is False
    (repo / "code.py").write_text("x = 2\n")
    assert benchlog.git_state()[1] is True
