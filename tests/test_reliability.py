"""Issue 16 probes: bad input is refused before work starts (naming what to fix), finished work is kept, resumed
runs stay honest, loading is safe, run directories are locked, secrets never reach error output, and user errors
end in one line with a non-zero exit code. One test (or a few) per probe group; all in the default suite."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from data.rwku import FORGET_FILES
from verl.utils.cli import ConfigError, UserError, run_main
from verl.utils.records import DataValidationError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "RWKU" / "Target" / "101_Elowen_Marsh"
CANARY = "sk-canary-0123456789abcdefghijklmnop"


def exit_of(main, *args) -> int:
    with pytest.raises(SystemExit) as info:
        run_main(main, *args)
    return info.value.code


# ----------------------------------------------------------------------------------------- 1. RL data validated
def _rl_file(tmp_path, rows, name="rows.json", raw: str | None = None) -> Path:
    path = tmp_path / name
    path.write_text(raw if raw is not None else json.dumps(rows), encoding="utf-8")
    return path


GOOD = {"prompt": "Who wrote Carrie?", "solution": ["<reject>", "I am not sure.", "Stephen King"]}


@pytest.mark.parametrize("rows, raw, expected", [
    ([GOOD, {"prompt": "Q?"}], None, r"record 1: missing key 'solution'"),
    ([GOOD, {"prompt": 17, "solution": ["<normal>", "a"]}], None, r"record 1: key 'prompt' should be a non-empty string, got int"),
    ([GOOD, {"prompt": "Q?", "solution": ["<maybe>", "a"]}], None, r"record 1: key 'solution' must start with"),
    (None, json.dumps([GOOD, GOOD])[:-20], r"invalid JSON at line 1"),
    ([], None, r"has no records"),
])
def test_rl_dataset_names_file_record_and_key(tmp_path, rows, raw, expected):
    from verl.trainer.dataset import RLDataset

    path = _rl_file(tmp_path, rows, raw=raw)
    with pytest.raises(DataValidationError, match=expected) as info:
        RLDataset(str(path), tokenizer=None, max_prompt_length=64)  # fails before any tokenization
    assert str(path) in str(info.value)
    assert isinstance(info.value, UserError)


def test_rl_dataset_jsonl_bad_line_names_the_line(tmp_path):
    from verl.trainer.dataset import RLDataset

    path = _rl_file(tmp_path, None, "rows.jsonl", raw=json.dumps(GOOD) + "\n{\"prompt\": \"Q\n")
    with pytest.raises(DataValidationError, match=r"rows.jsonl: invalid JSON at line 2"):
        RLDataset(str(path), tokenizer=None, max_prompt_length=64)


# ----------------------------------------------------------------------------------------- 2-3. evaluator checks
def _eval_args(tmp_path, *extra, target="101_Elowen_Marsh", data_dir=None):
    from verl.eval.cli import build_parser

    argv = ["--model_path", "unused", "--target", target, "--output", str(tmp_path / "out" / "r.json"), "--engine", "hf",
            *extra]
    if data_dir:
        argv += ["--data_dir", str(data_dir)]
    return build_parser().parse_args(argv)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model during these tests is a failure: every check must come first."""
    import verl.eval.loader as emb  # where the evaluator looks the loader up

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(emb, "load_model_and_tokenizer", boom)


@pytest.mark.parametrize("extra, expected", [
    (["--limit", "0"], r"--limit 0: must be >= 1"),
    (["--limit", "-1"], r"--limit -1: must be >= 1"),
    (["--utility_limit", "Gen=0"], r"bad --utility_limit entry 'Gen=0'"),
    (["--suites", "naturalness", "--judge", "openai"], r"--judge openai needs OPENAI_API_KEY"),
])
def test_evaluator_refuses_bad_flags_before_loading(tmp_path, no_model, monkeypatch, extra, expected):
    from verl.eval.cli import run

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match=expected):
        run(_eval_args(tmp_path, *extra))


def test_evaluator_refuses_unwritable_output_before_loading(tmp_path, no_model):
    from verl.eval.cli import build_parser, run

    (tmp_path / "afile").write_text("x")
    args = build_parser().parse_args(["--model_path", "m", "--target", "101", "--output", str(tmp_path / "afile" / "r.json")])
    with pytest.raises(UserError, match=r"--output .*afile/r.json: cannot write there"):
        run(args)
    args.output = str(tmp_path)
    with pytest.raises(UserError, match="is a folder"):
        run(args)


def test_evaluator_missing_probe_file_fails_not_partial_mean(tmp_path, no_model):
    from verl.eval import rwku
    from verl.eval.cli import run

    root = tmp_path / "data"
    shutil.copytree(SAMPLE, root / "RWKU" / "Target" / SAMPLE.name)
    (root / "RWKU" / "Target" / SAMPLE.name / "forget_level3.json").unlink()
    with pytest.raises(UserError, match=r"missing data file\(s\).*forget_level3.json"):
        run(_eval_args(tmp_path, "--suites", "forget", data_dir=root))
    # the library call fails too (before generating anything), instead of averaging the two levels left
    with pytest.raises(DataValidationError, match="forget_level3.json: file not found"):
        rwku.evaluate_probes(None, None, SAMPLE.name, FORGET_FILES, data_dir=root)


def test_limit_zero_or_negative_is_refused_by_the_suites():
    from verl.eval.muse import _limit as muse_limit
    from verl.eval.rwku import _limit

    assert _limit([1, 2, 3], None) == [1, 2, 3] and _limit([1, 2, 3], 2) == [1, 2]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            _limit([1, 2, 3], bad)
        with pytest.raises(ValueError, match="positive"):
            muse_limit([1, 2, 3], bad)


def test_muse_target_other_than_books_is_refused(tmp_path, no_model):
    from verl.eval.cli import run
    from verl.eval.muse import evaluate_muse

    args = _eval_args(tmp_path, target="news")
    args.benchmark = "muse"
    with pytest.raises(UserError, match=r"--target news: only \('books',\)"):
        run(args)
    with pytest.raises(ValueError, match="only 'books'"):
        evaluate_muse(None, None, corpus="news")


def test_evaluator_keeps_finished_suites_for_the_rerun(tmp_path, monkeypatch):
    """A run killed in its second suite keeps the first; the rerun of the same command skips it."""
    import verl.eval.cli as cli
    import verl.eval.loader as emb  # where the evaluator looks the loader up

    class Model:
        def eval(self):
            return self

    monkeypatch.setattr(emb, "load_model_and_tokenizer", lambda *a, **k: (Model(), None))
    calls = []

    def forget(ctx, suite):
        calls.append(suite)
        ctx.metrics["forget"] = {"All": 0.25}
        ctx.generations["forget_level1"] = [{"output": "x"}]

    def mia_killed(ctx, suite):
        raise KeyboardInterrupt  # stands in for a kill in the middle of the suite

    def mia(ctx, suite):
        calls.append(suite)
        ctx.metrics["mia"] = {"FM": {"loss": 2.0}}

    monkeypatch.setitem(cli.SUITES["rwku"], "forget", forget)
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia_killed)
    args = _eval_args(tmp_path, "--suites", "forget,mia")
    with pytest.raises(KeyboardInterrupt):
        cli.run(args)
    partial = cli.partial_path(args.output)
    assert json.loads(partial.read_text())["done"] == ["forget"] and not Path(args.output).exists()
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia)
    result = cli.run(_eval_args(tmp_path, "--suites", "forget,mia"))
    assert calls == ["forget", "mia"]  # forget ran once, in the first (killed) run
    assert result["metrics"] == {"forget": {"All": 0.25}, "mia": {"FM": {"loss": 2.0}}}
    assert not partial.exists() and Path(args.output).is_file()
    # other flags (here --limit) make another evaluation: nothing is reused from a partial file made without them
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia_killed)
    with pytest.raises(KeyboardInterrupt):
        cli.run(_eval_args(tmp_path, "--suites", "forget,mia"))
    monkeypatch.setitem(cli.SUITES["rwku"], "mia", mia)
    cli.run(_eval_args(tmp_path, "--suites", "forget,mia", "--limit", "3"))
    assert calls == ["forget", "mia", "forget", "forget", "mia"]


# ----------------------------------------------------------------------------------------- 3. report
def _result(path: Path, method: str, limit, forget_all: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "rwku", "method": method, "target": "1_Stephen_King", "protocol": "paper",
                                "created": "2026-01-01T00:00:00", "config": {"limit": limit, "utility_limit": None},
                                "metrics": {"forget": {"All": forget_all}, "neighbor": {"All": 0.5}}}))


def test_report_flags_mixed_limits_and_unreadable_files(tmp_path, capsys):
    from verl.eval.report import main, make_report

    runs = tmp_path / "runs"
    _result(runs / "a.json", "original", None, 0.6)
    _result(runs / "b.json", "rule", 2, 0.1)
    res = make_report([runs], tmp_path / "out")
    notes = res["tables"][0]["notes"]
    assert any("mixed record limits" in n and "--limit 2: rule" in n and "full: original" in n for n in notes), notes
    assert "mixed record limits" in (tmp_path / "out" / "report.md").read_text()
    (runs / "c.json").write_text('{"benchmark": "rwku", "metr')  # a torn / corrupt result file
    assert main([str(runs), "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "unreadable result file" in err and "c.json" in err
    assert "c.json" in (tmp_path / "out2" / "report.md").read_text()
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["unreadable"][0].startswith(str(runs / "c.json"))


def test_report_notes_a_uniform_limit(tmp_path):
    from verl.eval.report import make_report

    _result(tmp_path / "runs" / "a.json", "original", 5, 0.6)
    notes = make_report([tmp_path / "runs"], tmp_path / "out")["tables"][0]["notes"]
    assert any("every result used --limit 5" in n for n in notes)


# ----------------------------------------------------------------------------------------- 4. honest resume
def test_config_changes_ignores_only_the_step_budget_and_bookkeeping():
    from verl.trainer.ray_trainer import config_changes

    old = {"trainer": {"total_steps": 10, "save_freq": 5, "seed": 1}, "worker": {"actor": {"optim": {"lr": 1e-6}}},
           "data": {"train_files": "a.json", "betas": [0.9, 0.99]}}
    new = {"trainer": {"total_steps": 20, "save_freq": 1, "seed": 1}, "worker": {"actor": {"optim": {"lr": 2e-6}}},
           "data": {"train_files": "b.json", "betas": (0.9, 0.99)}}
    assert config_changes(old, new) == ["data.train_files: 'a.json' -> 'b.json'",
                                        "worker.actor.optim.lr: 1e-06 -> 2e-06"]


def test_resume_refuses_changed_config_and_data_and_records_an_allowed_change(tiny_model_path, tmp_path):
    from tests.test_trainer_loop import REWARD_SRC, tiny_overrides
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer
    from verl.utils.checkpoint import CheckpointManager

    reward = tmp_path / "reward.py"
    reward.write_text(REWARD_SRC)
    train = tmp_path / "train.json"
    rows = [{"prompt": f"Question {i}?", "solution": ["<normal>", f"answer {i}"]} for i in range(4)]
    train.write_text(json.dumps(rows))
    run = tmp_path / "run"

    def overrides(**kw):
        return tiny_overrides(tiny_model_path, run, f"{reward}:letter_e",
                              **{"data.train_files": str(train), "trainer.save_freq": 1, "trainer.save_limit": 5,
                                 "data.max_response_length": 3, "trainer.keep_resume_state": "true", **kw})

    def fit(ov):
        trainer = RayPPOTrainer(load_config(None, ov))
        try:
            return trainer.fit()
        finally:
            trainer.close()

    fit(overrides(**{"trainer.total_steps": 1}))
    info0 = json.loads((run / "run_info.json").read_text())
    # a run killed after logging step 2 but before its checkpoint completed: the resume redoes step 2
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "actor/lr": 1e-3}) + "\n" + '{"step": 3, "act')  # and a torn line
    assert CheckpointManager(run).latest().name == "global_step_1"
    with pytest.raises(ConfigError, match=r"worker.actor.optim.lr: 0.001 -> 0.002.*allow_config_change=true"):
        RayPPOTrainer(load_config(None, overrides(**{"worker.actor.optim.lr": 2e-3})))
    train.write_text(json.dumps(rows[::-1]))  # same path, other content
    with pytest.raises(ConfigError, match=r"data train file content: sha256"):
        RayPPOTrainer(load_config(None, overrides()))
    assert json.loads((run / "run_info.json").read_text()) == info0  # refused resumes touch nothing
    history = fit(overrides(**{"worker.actor.optim.lr": 2e-3, "trainer.allow_config_change": "true"}))
    assert [h["step"] for h in history] == [2]
    assert history[0]["actor/lr"] == pytest.approx(2e-3)  # the new lr is the one used, not the checkpoint's
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # step 2 of the killed run was dropped, not repeated
    info = json.loads((run / "run_info.json").read_text())
    assert info["created"] == info0["created"] and info["data_sha256"] == info0["data_sha256"]  # original kept
    (rec,) = info["resumes"]
    assert rec["step"] == 1 and rec["allow_config_change"] is True
    assert any(c.startswith("worker.actor.optim.lr") for c in rec["config_changes"])
    assert any(c.startswith("data train file content") for c in rec["config_changes"])


# ----------------------------------------------------------------------------------------- 5. config values
@pytest.mark.parametrize("override, key", [
    ("data.rollout_batch_size=-2", "data.rollout_batch_size=-2"),
    ("data.rollout_batch_size=0", "data.rollout_batch_size=0"),
    ("worker.actor.micro_batch_size_per_device_for_update=0", "micro_batch_size_per_device_for_update=0"),
    ("worker.actor.global_batch_size=0", "worker.actor.global_batch_size=0"),
    ("trainer.n_workers=0", "trainer.n_workers=0"),
    ("trainer.total_steps=-1", "trainer.total_steps=-1"),
    ("data.max_response_length=0", "data.max_response_length=0"),
    ("worker.rollout.temperature=0", "worker.rollout.temperature=0.0"),
])
def test_config_values_are_checked(override, key):
    from verl.config import load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": must be"):
        load_config(None, [override])


def test_grpo_with_one_rollout_warns(caplog):
    from verl.config import load_config

    with caplog.at_level(logging.WARNING, logger="verl.config"):
        load_config(None, ["worker.rollout.n=1", "worker.actor.micro_batch_size_per_device_for_update=1"])
    assert "worker.rollout.n=1 with algorithm.adv_estimator=grpo" in caplog.text


def test_missing_config_file_is_one_line(capsys):
    from verl.trainer.main import main

    assert exit_of(main, ["config=/missing.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: config file /missing.yaml does not exist (config=FILE.yaml; see examples/)"


# ----------------------------------------------------------------------------------------- 6. loading safety
def test_pickled_only_model_folder_is_refused(tmp_path, tiny_model_path):
    from verl.models.embedded import load_model_and_tokenizer, resolve_model_path
    from verl.workers.fsdp_utils import load_module

    folder = tmp_path / "bin_model"
    shutil.copytree(tiny_model_path, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    for load in (resolve_model_path, load_model_and_tokenizer, lambda p: load_module(p, "actor", None)):
        with pytest.raises(UserError, match=r"only pickled weights \(pytorch_model.bin\).*safetensors only"):
            load(str(folder))
    assert resolve_model_path(tiny_model_path) == tiny_model_path


def test_rs_model_loading_refuses_pickled_folder(tmp_path, tiny_model_path):
    from RS.args import TrainArgs
    from RS.train import _load_model

    folder = tmp_path / "bin_model"
    shutil.copytree(tiny_model_path, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="only pickled weights"):
        _load_model(TrainArgs(model_name_or_path=str(folder), output_dir=str(tmp_path / "o"), target="1"))


class _Evil:  # any non-tensor object: unpickling it could run code
    def __reduce__(self):
        return (print, ("code ran at load time",))


def test_worker_state_loads_with_weights_only_and_foreign_pickles_are_refused(tmp_path):
    import random

    import numpy as np
    import torch

    from verl.workers import fsdp_utils
    from verl.workers.fsdp_workers import FSDPWorker

    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = fsdp_utils.rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)  # the saved state needs no unpickling of objects
    fsdp_utils.set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected

    torch.save({"actor_optim": _Evil()}, tmp_path / "worker_rank0.pt")
    fake = type("W", (), {"rank": 0})()
    with pytest.raises(UserError, match="refusing to unpickle"):
        FSDPWorker.load_checkpoint(fake, str(tmp_path))


def test_changed_lr_applies_after_loading_optimizer_state():
    import torch

    from verl.config import OptimConfig
    from verl.workers import optim
    from verl.workers.fsdp_utils import apply_optim_config

    module = torch.nn.Linear(2, 2)
    opt, sched = optim.build_optimizer(module, OptimConfig(lr=1e-3, lr_warmup_steps=4))
    sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2, sched2 = optim.build_optimizer(module, OptimConfig(lr=5e-3, lr_warmup_steps=4))
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 4)  # the checkpoint's lr came back
    apply_optim_config(opt2, sched2, OptimConfig(lr=5e-3, lr_warmup_steps=4))
    assert opt2.param_groups[0]["lr"] == pytest.approx(5e-3 * 2 / 4) and sched2.get_last_lr()[0] == pytest.approx(2.5e-3)


# ----------------------------------------------------------------------------------------- 7. run-dir lock
def test_a_second_trainer_on_a_live_run_dir_is_refused(tmp_path, tiny_model_path):
    from verl.config import load_config
    from verl.trainer.ray_trainer import RayPPOTrainer
    from verl.utils.runlock import RunDirInUseError, RunDirLock

    run = tmp_path / "run"
    held = RunDirLock(run, "trainer").acquire()  # the "old trainer, still running"
    try:
        with pytest.raises(RunDirInUseError, match=rf"{run} is in use by another trainer \(pid {os.getpid()}"):
            RayPPOTrainer(load_config(None, [f"trainer.save_dir={run}", f"worker.actor.model_path={tiny_model_path}"]))
    finally:
        held.release()
    with RunDirLock(run):  # released: the next run may start (a killed holder's lock goes with its process)
        pass


def test_lock_dies_with_its_process(tmp_path):
    from verl.utils.runlock import RunDirLock

    code = f"from verl.utils.runlock import RunDirLock; RunDirLock({str(tmp_path)!r}).acquire(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    with RunDirLock(tmp_path):
        pass


def test_checkpoint_begin_spares_a_live_processes_temp_dir(tmp_path):
    from verl.utils.checkpoint import CheckpointManager

    mgr = CheckpointManager(tmp_path)
    root = tmp_path / "checkpoints"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = root / f".tmp-global_step_3-{os.getppid()}"  # our parent process is alive
    stale = root / f".tmp-global_step_3-{dead.pid}"
    legacy = root / ".tmp-global_step_2"
    for d in (live, stale, legacy):
        d.mkdir(parents=True)
    tmp = mgr.begin(4)
    assert live.is_dir() and not stale.exists() and not legacy.exists()
    assert tmp.name == f".tmp-global_step_4-{os.getpid()}"


def test_rs_output_dir_is_locked(tmp_path):
    from RS.args import parse_args
    from RS.train import train
    from verl.utils.runlock import RunDirInUseError, RunDirLock

    out = tmp_path / "rs"
    args = parse_args(["--stage", "rt", "--target", "101", "--output_dir", str(out)])
    with RunDirLock(out):
        with pytest.raises(RunDirInUseError, match="in use by another RS.train run"):
            train(args)


def test_rs_process_state_ignores_a_taken_inherited_master_port():
    """With LOCAL_RANK set (as accelerate leaves RANK/WORLD_SIZE/LOCAL_RANK in the environment of a process that ran
    it, here pytest's), accelerate opens a gloo group even for one CPU process, on the inherited MASTER_PORT: while
    the parent's own group held that port, RS.train failed at start with EADDRINUSE (a flaky
    test_runners failure). A run of one now takes a free port of its own."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(held.getsockname()[1]),
               "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
        code = "from RS.train import _partial_state; s = _partial_state(); print(s.num_processes, s.is_main_process)"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["1", "True"]


# ----------------------------------------------------------------------------------------- 8. RS overwrite
def test_rs_overwrite_output_dir_clears_the_old_run(tmp_path):
    from RS.args import TrainArgs
    from RS.train import OutputDirNotEmptyError, _prepare_output_dir

    out = tmp_path / "rs"
    (out / "checkpoint-epoch-1").mkdir(parents=True)
    (out / "checkpoint-epoch-3").mkdir()
    (out / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    (out / "DONE").write_text("{}")
    (out / "model.safetensors").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirNotEmptyError, match="--overwrite_output_dir"):
        _prepare_output_dir(TrainArgs(output_dir=str(out), target="1"))
    _prepare_output_dir(TrainArgs(output_dir=str(out), target="1", overwrite_output_dir=True))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the earlier run's outputs are gone


# ----------------------------------------------------------------------------------------- 9. secrets, judge failures
class _Echo401(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that refuses every key and echoes it in the error, as some proxies do."""

    def do_POST(self):  # noqa: N802
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                                     "code": "invalid_api_key"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_endpoint(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Echo401)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    yield url
    server.shutdown()


def test_scrub_hides_keys_and_fragments(monkeypatch):
    from verl.utils.secrets import scrub

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    text = scrub(f"401: {CANARY} / truncated {CANARY[:12]}... / Bearer hf_abcdefghijklmnopqrstuvwx")
    assert CANARY[:8] not in text and "hf_abcdef" not in text and text.count("***") == 3


def test_synthesize_against_an_echoing_401_leaks_no_key(tmp_path, echo_endpoint):
    env = {**os.environ, "OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": echo_endpoint, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "data.synthesize", "--benchmark", "rwku", "--target", "101",
                           "--out", str(tmp_path / "o"), "--generator", "openai", "--max_retries", "0", "--no_cache"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "401" in out and "Incorrect API key" in out  # the endpoint's answer is shown ...
    assert CANARY not in out and CANARY[:8] not in out  # ... without the key
    for f in (tmp_path / "o").rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert CANARY not in f.read_text(errors="ignore"), f


def test_judge_exits_non_zero_when_every_call_failed(tmp_path, echo_endpoint, capsys):
    from verl.eval.naturalness import main

    result = tmp_path / "r.json"
    result.write_text(json.dumps({"benchmark": "rwku", "metrics": {}, "generations": {
        "forget_level1": [{"query": "Who?", "answer": "A", "output": "I don't know."}]}}))
    code = exit_of(main, [str(result), "--judge", "openai", "--cache_path", str(tmp_path / "cache.jsonl"),
                          "--concurrency", "1"])
    err = capsys.readouterr()
    assert code == 2 and "every judge call failed" in err.err
    assert CANARY not in err.out + err.err


def test_log_records_and_tracebacks_are_scrubbed(monkeypatch, capsys):
    import io

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("test.secret")
    log.addHandler(handler)

    def main():
        log.warning("request failed: %s", f"echo {CANARY}")
        raise RuntimeError(f"endpoint said: bad key {CANARY}")

    try:
        assert exit_of(main) == 1  # a non-user error: traceback kept, exit 1
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Traceback" in err and "endpoint said: bad key ***" in err and CANARY not in err
    assert stream.getvalue().strip() == "request failed: echo ***"


# ----------------------------------------------------------------------------------------- 10. one-line user errors
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


def test_evaluator_fails_when_every_judge_call_failed_and_keeps_the_suites_before(tmp_path, monkeypatch, echo_endpoint):
    import verl.eval.cli as cli
    import verl.eval.loader as emb  # where the evaluator looks the loader up

    monkeypatch.setattr(emb, "load_model_and_tokenizer", lambda *a, **k: (type("M", (), {"eval": lambda s: s})(), None))

    def forget(ctx, suite):
        ctx.metrics["forget"] = {"All": 0.25}
        ctx.generations["forget_level1"] = [{"query": "Who?", "answer": "A", "output": "I don't know."}]

    monkeypatch.setitem(cli.SUITES["rwku"], "forget", forget)
    args = _eval_args(tmp_path, "--suites", "forget,naturalness", "--judge", "openai")
    monkeypatch.setenv("RULE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="naturalness: every judge call failed") as info:
        cli.run(args)
    assert CANARY not in str(info.value)
    assert json.loads(cli.partial_path(args.output).read_text())["done"] == ["forget"]
