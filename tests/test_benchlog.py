"""Benchmark CSVs: rows with differing keys keep every column, and a wider row rewrites the header
without shifting old rows."""

import csv

from phide.runtime.benchlog import append_csv


def _read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_append_keeps_every_column_and_old_rows(tmp_path):
    path = tmp_path / "r" / "bench.csv"
    append_csv(path, [{"config": "a", "wall": 1}, {"config": "b", "wall": 2, "vs_a": 0.5}])
    assert _read(path) == [{"config": "a", "wall": "1", "vs_a": ""}, {"config": "b", "wall": "2", "vs_a": "0.5"}]
    append_csv(path, [{"config": "c", "wall": 3}])  # same columns: appended
    append_csv(path, [{"repeats": 3, "config": "d", "wall": 4}])  # a new column: header widened
    rows = _read(path)
    assert [r["config"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0] == {"config": "a", "wall": "1", "vs_a": "", "repeats": ""}
    assert rows[3] == {"config": "d", "wall": "4", "vs_a": "", "repeats": "3"}
    append_csv(path, [])
    assert len(_read(path)) == 4
