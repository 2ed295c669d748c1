"""Training-curve helpers: metrics.jsonl parsing (resumed steps, bad lines), moving average, table and PNG."""

import json
import math

import pytest

from verl.utils.curves import markdown_table, moving_average, read_metrics, write_curves


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_read_metrics_keeps_the_last_row_of_a_redone_step(tmp_path):
    f = tmp_path / "metrics.jsonl"
    _write(f, [{"step": 0, "data/train_rows": 10}, {"step": 1, "reward/mean": 0.1}, {"step": 2, "reward/mean": 0.2},
               {"step": 2, "reward/mean": 0.25}, {"step": 3, "reward/mean": 0.3, "reward/reject_mean": 0.9,
                                                  "reward/normal_mean": 0.2}])  # resumed after step 1
    rows = read_metrics(f)
    assert [(r["step"], r["reward/mean"]) for r in rows] == [(1, 0.1), (2, 0.25), (3, 0.3)]
    # 3 of 4 rows <normal>: the plain mean follows the batch mix, the balanced one does not
    assert rows[2]["reward/balanced_mean"] == pytest.approx(0.55) and "reward/balanced_mean" not in rows[0]


def test_read_metrics_names_the_bad_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "reward/mean": 0.1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(f)


def test_moving_average_is_trailing_and_skips_nan():
    out = moving_average([1.0, 3.0, float("nan"), 5.0], window=2)
    assert out[:2] == [1.0, 2.0] and out[2] == 3.0 and out[3] == 5.0
    assert math.isnan(moving_average([float("nan")], 3)[0])


def test_write_curves(tmp_path):
    rows = [{"step": s, "reward/mean": 0.1 * s, "reward/reject_mean": 0.2, "timing/gen": 1.0, "timing/step": 2.0}
            for s in (1, 2, 3)]
    _write(tmp_path / "metrics.jsonl", [*rows, {"step": 3, "val/reward": 0.5}])
    png, md = write_curves(tmp_path)
    assert png.stat().st_size > 1000
    assert md.read_text() == markdown_table(rows) and "| 3 | 0.3 | 0.2 |" in md.read_text()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        write_curves(tmp_path / "missing")
