"""Progress bars report through logging when stderr is not a terminal (nohup, CI, redirected runs)."""

import logging

import pytest

from verl.utils.progress import progress


@pytest.fixture
def logged(caplog, monkeypatch):
    """stderr is no TTY (as under nohup or CI); returns a function giving the progress lines logged so far."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    caplog.set_level(logging.INFO, logger="verl.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "verl.progress"]


def test_progress_logs_without_a_terminal(logged):
    bar = progress(4, "generate", log_interval=0)
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = logged()
    assert lines, "no progress was logged"
    assert all("\r" not in line for line in lines)
    assert lines[-1].startswith("generate:") and "4/4" in lines[-1]


def test_progress_over_an_iterable_and_disabled(logged):
    assert list(progress(iterable=range(3), desc="steps", log_interval=0)) == [0, 1, 2]
    assert list(progress(iterable=range(3), desc="quiet", disable=True)) == [0, 1, 2]
    lines = logged()
    assert any(m.startswith("steps:") and "3/3" in m for m in lines)
    assert not any(m.startswith("quiet") for m in lines)


def test_postfix_does_not_add_log_lines(logged):
    """One training step = update + set_postfix; without a terminal that must not log a line per step."""
    bar = progress(5, "steps", log_interval=3600)
    for step in range(5):
        bar.update(1)
        bar.set_postfix(reward=f"{step / 10:.3f}")
    bar.close()
    lines = logged()
    assert len(lines) == 2  # the opening line and the closing one
    assert "5/5" in lines[-1] and "reward=0.400" in lines[-1]
