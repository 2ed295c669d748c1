"""``verl.utils.cli.run_main``, the entry points' wrapper: a user error ends in one line and exit code 2, a
programming error keeps its traceback and exits 1; every entry point runs through it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from verl.utils.cli import run_main

REPO = Path(__file__).resolve().parents[1]


def exit_of(main, *args) -> int:
    with pytest.raises(SystemExit) as info:
        run_main(main, *args)
    return info.value.code


def _entry_points():
    from data.prepare import main as prepare_main
    from data.synthesize import main as synth_main
    from RS.train import main as rs_main
    from verl.eval.cli import main as eval_main
    from verl.eval.naturalness import main as nat_main
    from verl.eval.report import main as report_main
    from verl.trainer.main import main as trainer_main

    return {
        "verl.trainer.main": (trainer_main, ["data.rollout_batch_size=-2"], "data.rollout_batch_size=-2: must be"),
        "RS.train": (rs_main, ["--stage", "nope", "--target", "1", "--output_dir", "/tmp/x"], "unknown --stage 'nope'"),
        "verl.eval": (eval_main, ["--model_path", "m", "--target", "no_such_target", "--output", "/tmp/r.json"],
                      "unknown RWKU target 'no_such_target'"),
        "verl.eval.report": (report_main, ["/no/such/dir", "--out", "/tmp/rep"], "/no/such/dir does not exist"),
        "data.synthesize": (synth_main, ["--target", "no_such_target", "--out", "/tmp/s"], "unknown RWKU target"),
        "data.prepare": (prepare_main, ["--benchmark", "rwku", "--source", "/no/such", "--out", "/tmp/p"],
                         "--source /no/such: not 'hf' and not a folder"),
        "verl.eval.naturalness": (nat_main, ["/no/such.json", "--judge", "proxy"], "/no/such.json does not exist"),
    }


@pytest.mark.parametrize("name", ["verl.trainer.main", "RS.train", "verl.eval", "verl.eval.report", "data.synthesize",
                                  "data.prepare", "verl.eval.naturalness"])
def test_user_errors_end_in_one_line_and_exit_2(name, capsys):
    main, argv, expected = _entry_points()[name]
    assert exit_of(main, argv) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and " INFO " not in line]
    assert len(err_lines) == 1 and expected in err_lines[0] and "Traceback" not in err_lines[0], err_lines


@pytest.mark.parametrize("module", ["verl/trainer/main.py", "RS/train.py", "verl/eval/__main__.py", "verl/eval/cli.py",
                                    "verl/eval/report.py", "data/synthesize.py", "data/prepare.py",
                                    "verl/eval/naturalness.py"])
def test_every_entry_point_runs_through_run_main(module):
    src = (REPO / module).read_text()
    assert "run_main(main)" in src.split('if __name__ == "__main__":')[-1]


def test_programming_errors_keep_their_traceback(capsys):
    def main():
        return {}["missing"]

    assert exit_of(main) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "KeyError: 'missing'" in err


def test_trainer_cli_subprocess_one_line():
    proc = subprocess.run([sys.executable, "-m", "verl.trainer.main", "config=/missing.yaml"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config file /missing.yaml does not exist (config=FILE.yaml; "
                                                "see examples/)"]
