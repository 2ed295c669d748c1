"""The pipeline (verl/pipeline) without training: settings, method table, budgets and overlays, the plan, and a dry
run through every runner script x protocol x method. Dry runs load no model, so all of this is fast."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_TARGET
from verl.pipeline.cli import main
from verl.pipeline.methods import METHODS, parse_methods
from verl.pipeline.plan import PlanError, Planner
from verl.pipeline.settings import count_params, resolve_settings

RWKU_SCRIPTS = ["run_rwku.sh",
                *sorted(str(p.relative_to(REPO)) for p in (REPO / "examples/exp_target/RWKU").glob("*.sh"))]
MUSE_SCRIPTS = ["run_muse.sh", "examples/exp_target/MUSE/grpo_main.sh"]
ALL_METHODS = " ".join(METHODS)


def _env(tmp_path, **kw) -> dict:
    """A clean environment: no pipeline variable leaks in from the caller's shell."""
    from verl.pipeline.settings import VARS

    env = {k: v for k, v in os.environ.items() if k not in {v.env for v in VARS}}
    env.update({"LOG_DIR": str(tmp_path), "BUDGET": "test", "TARGETS": SAMPLE_TARGET,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _plan(benchmark="rwku", env=None, overlays=None, n_gpus=None, environ=None):
    values = {k: v for k, v in (env or {}).items()}
    if overlays:
        values["OVERLAYS"] = " ".join(overlays)
    from verl.pipeline.settings import VARS

    values = {v.env: values.get(v.env, "") for v in VARS}
    settings = resolve_settings(benchmark, values, os.environ, has_gpu=lambda: 0)
    return Planner(settings, n_gpus).plan(visible_gpus=lambda: 0, environ={} if environ is None else environ)


def _steps(plan, target=0):
    return {s.name: s for s in plan.targets[target].steps}


BASE = {"BUDGET": "test", "TARGETS": SAMPLE_TARGET, "LOG_DIR": "/nonexistent-log"}


# ------------------------------------------------------------------------------------------- settings, methods
def test_methods_parse_in_order_and_unknown_names_fail():
    assert [m.name for m in parse_methods("ga, rule_grpo ga")] == ["ga", "rule_grpo"]
    with pytest.raises(ValueError, match="unknown method 'grpo'.*rule_grpo"):
        parse_methods("grpo")
    # one row label per method, the same on both benchmarks
    assert METHODS["rule_grpo"].label == "RULE (GRPO)" and METHODS["rule_grpo"].benchmarks == ("rwku", "muse")


@pytest.mark.parametrize("var,value,message", [
    ("BUDGET", "fast", "BUDGET must be smoke, paper, test"),
    ("INJECT", "2", "INJECT must be one of 0 | 1"),
    ("REBO_START", "sft", "REBO_START must be one of rs | original"),
    ("REBO_DATA", "all", "REBO_DATA must be one of full | reject_only | indirect"),
    ("GPUS", "0,x", "GPUS must be a comma list"),
    ("RS_STEPS", "many", "RS_STEPS must be a whole number"),
    ("METHODS", "rule_grpo dpo", "unknown method 'dpo'"),
    ("SUITES", "forget,bogus", "unknown suite"),
    ("MODEL", "./no/such/model", "MODEL: model path ./no/such/model does not exist"),
    ("TARGETS", "999_Nobody", "unknown RWKU target"),
])
def test_bad_values_fail_with_a_message(var, value, message, capsys):
    env = {**BASE, var: value}
    assert main(["rwku", "--dry-run"], env=env) == 2
    assert message in capsys.readouterr().err


def test_variables_of_the_other_benchmark_are_ignored_with_a_note(capsys):
    assert main(["rwku", "--dry-run"], env={**BASE, "MUSE_LIMIT": "5"}) == 0
    assert "note: MUSE_LIMIT applies to muse only: ignored for rwku" in capsys.readouterr().out


def test_a_misspelt_variable_is_named(capsys):
    assert main(["rwku", "--dry-run"], env={**BASE, "METHOD": "rule_ppo"}) == 0
    assert "variable METHOD is not a pipeline setting (did you mean METHODS?)" in capsys.readouterr().out


def test_unknown_flag_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["rwku", "--dry-run", "--budgets", "test"], env=BASE)
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_flag_wins_over_variable():
    from verl.pipeline.cli import _values, build_parser

    ns = build_parser().parse_args(["rwku", "--budget", "smoke", "--overlay", "a.yaml", "--overlay", "b.yaml"])
    values = _values(ns, {"BUDGET": "paper", "EXP": "e"})
    assert values["BUDGET"] == "smoke" and values["EXP"] == "e" and values["OVERLAYS"] == "a.yaml b.yaml"


def test_protocol_default_from_the_model_size(tiny_model_path):
    assert count_params(tiny_model_path) < 10_000_000
    s = resolve_settings("rwku", {"MODEL": tiny_model_path, **BASE}, {}, has_gpu=lambda: 0)
    assert (s.protocol, s.exp) == ("sandbox", "model_test_sandbox")
    s = resolve_settings("rwku", {"MODEL": "meta-llama/Meta-Llama-3-8B-Instruct", **BASE}, {}, has_gpu=lambda: 0)
    assert s.protocol == "paper" and "size unknown" in s.protocol_reason
    with pytest.raises(ValueError, match="INJECT=1 is RWKU only"):
        resolve_settings("muse", {"INJECT": "1", "BUDGET": "test"}, {}, has_gpu=lambda: 0)


# ------------------------------------------------------------------------------------------- budgets, plan
def test_budget_sections_and_variables_merge_in_order():
    sandbox = _steps(_plan(env={**BASE, "BUDGET": "smoke", "INJECT": "1"}))
    rs = sandbox["rs"].config
    assert rs["max_steps"] == 10 and rs["config"] == "RS/configs/smollm2/rs.yaml"  # the sandbox section
    assert rs["prompt_form"] == "both" and rs["learning_rate"] == 1e-4
    rebo = sandbox["rule_grpo"].config
    assert rebo["data"]["prompt_format"] == "rwku" and rebo["trainer"]["total_steps"] == 6
    assert rebo["data"]["stratify_labels"] is True  # 4 + 4 of 8 prompts a step (docs/sandbox.md, experiment log #19)
    assert rebo["worker"]["actor"]["optim"]["lr"] == 1e-4
    # a generic refusal earns less than a named one (log #43), a wrong boundary answer less than a right one, a
    # refusal that runs on less than one that ends (log #39)
    assert rebo["worker"]["reward"]["kwargs"] == {"alpha": 0.25, "beta": 0.75, "normal_alpha": 0.25,
                                                  "tail_penalty": 0.5}
    paper_forms = _steps(_plan(env={**BASE, "BUDGET": "smoke", "INJECT": "0"}))
    assert paper_forms["rule_grpo"].config["data"]["prompt_format"] == "chat"  # the release's form off the sandbox
    assert paper_forms["rule_grpo"].config["data"]["stratify_labels"] is False  # the release's random batches
    assert not paper_forms["rule_grpo"].config["worker"].get("reward", {}).get("kwargs", {})  # the release's reward
    assert "prompt_form" not in paper_forms["rs"].config or paper_forms["rs"].config["prompt_form"] == "chat"
    rs = _steps(_plan(env={**BASE, "BUDGET": "smoke", "INJECT": "0"}))["rs"].config
    assert rs["max_steps"] == 6
    steps = _steps(_plan(env={**BASE, "BUDGET": "smoke", "INJECT": "1", "RS_STEPS": "3", "REBO_STEPS": "7"}))
    assert steps["rs"].config["max_steps"] == 3  # a variable wins over every budget section
    assert steps["rs"].config["refusal_stop"] == 0  # RS_STEPS means exactly that many steps
    assert steps["rule_grpo"].config["trainer"]["total_steps"] == 7


def test_cpu_budgets_use_cpu_configs_for_every_rebo_method():
    steps = _steps(_plan(env={**BASE, "METHODS": "rule_grpo rule_ppo rule_rpp"}))
    for name, algo in (("rule_grpo", "grpo"), ("rule_ppo", "gae"), ("rule_rpp", "reinforce_plus_plus")):
        cfg = steps[name].config
        assert cfg["trainer"]["device"] == "cpu" and cfg["trainer"]["n_workers"] == 1, name
        assert cfg["algorithm"]["adv_estimator"] == algo
        assert steps[name].cmd[2] == f"config=examples/{name.split('_')[1]}_rj_rl_cpu.yaml"


def test_paper_budget_workers_from_gpus_and_no_gpu_stops_a_real_run(capsys):
    env = {**BASE, "BUDGET": "paper", "INJECT": "0", "METHODS": "rule_grpo rule_ppo", "GPUS": "0,1"}
    plan = _plan(env=env)
    steps = _steps(plan)
    assert steps["rule_grpo"].config["trainer"]["n_workers"] == 2 and "trainer.n_workers=2" in steps["rule_grpo"].cmd
    assert steps["rule_ppo"].config["trainer"]["device"] == "cuda"
    assert steps["rs"].config["config"] == "RS/configs/llama3_8b/rs.yaml"
    assert steps["rs"].cmd[:2] == ["-m", "accelerate.commands.launch"]  # one RS process per GPU
    assert plan.problems == ["GPUS=0,1: this machine has 0 visible GPU(s), so GPU id(s) 0,1 do not exist"]
    # without GPUs: the plan names the problem, a real run stops before its first stage
    env.pop("GPUS")
    plan = _plan(env=env, n_gpus=0)
    assert any("no GPU is visible" in p for p in plan.problems)
    assert main(["rwku"], env={**env, "LOG_DIR": "/tmp/unused-log"}) == 1
    assert "cannot run" in capsys.readouterr().err


def test_cpu_stages_keep_freed_memory_in_the_heap_unless_the_user_tunes_malloc():
    from verl.pipeline.runner import resource_lines
    from verl.utils.malloc import CPU_MALLOC_ENV

    cpu = _plan(env={**BASE, "BUDGET": "smoke"})
    assert {k: cpu.env[k] for k in CPU_MALLOC_ENV} == CPU_MALLOC_ENV and cpu.env["MALLOC_MMAP_MAX_"] == "0"
    assert "stages keep freed memory in malloc's heap (MALLOC_MMAP_MAX_=0 " in resource_lines(cpu)[0]
    for own in ({"MALLOC_ARENA_MAX": "2"}, {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"},
                {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}):
        plan = _plan(env={**BASE, "BUDGET": "smoke"}, environ=own)
        assert not set(CPU_MALLOC_ENV) & set(plan.env), own
        assert resource_lines(plan)[0].endswith("malloc as your environment sets it")
    assert "MALLOC_MMAP_MAX_" in _plan(env={**BASE, "BUDGET": "smoke"}, environ={"LD_PRELOAD": "libfoo.so"}).env
    gpu = _plan(env={**BASE, "BUDGET": "paper", "INJECT": "0", "GPUS": "0"}, n_gpus=1)
    assert not set(CPU_MALLOC_ENV) & set(gpu.env)


def test_paper_budget_has_no_fallback_to_another_models_config(tmp_path, monkeypatch):
    import dataclasses

    from verl.pipeline import methods

    steps = _steps(_plan(env={**BASE, "BUDGET": "paper", "INJECT": "0", "METHODS": "ga rt", "GPUS": "0"}))
    assert steps["ga"].config["config"] == "RS/configs/llama3_8b/ga.yaml"
    assert steps["rt"].config["config"] == "RS/configs/llama3_8b/rwku_rt.yaml"
    monkeypatch.setitem(methods.METHODS, "ga", dataclasses.replace(methods.METHODS["ga"], config_stem="ga_new"))
    with pytest.raises(PlanError, match=r"RS/configs/llama3_8b/ga_new.yaml does not exist.*'llama3_8b' config family"):
        _plan(env={**BASE, "BUDGET": "paper", "INJECT": "0", "METHODS": "ga", "GPUS": "0"})
    # a budget file naming a family without configs fails on RS the same way
    budget = tmp_path / "b.yaml"
    budget.write_text("family: qwen2_7b\n")
    with pytest.raises(PlanError, match="qwen2_7b/rs.yaml does not exist"):
        _plan(env={**BASE, "BUDGET": str(budget), "INJECT": "0"})


def test_overlay_with_an_unknown_key_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rebo_stat: original\n")
    with pytest.raises(PlanError, match="bad.yaml: unknown key"):
        _plan(env=BASE, overlays=[str(bad)])


def test_ablation_overlays():
    def rebo(overlay):
        return _steps(_plan(env={**BASE, "INJECT": "0"}, overlays=[f"examples/ablations/{overlay}.yaml"]))["rule_grpo"]

    model = "smollm2-135m-instruct"
    normal = _steps(_plan(env={**BASE, "INJECT": "0"}))["rule_grpo"]
    assert normal.inputs["model"].endswith("/rs") and normal.inputs["ref"] == normal.inputs["model"]
    assert rebo("without_rs").inputs["model"] == model and rebo("without_rs").inputs["ref"] == model
    st = rebo("ref_original")
    assert st.inputs["model"].endswith("/rs") and st.inputs["ref"] == model
    st = rebo("without_boundary")
    assert st.inputs["data"].endswith("rebo_train.reject_only.json") and st.prepare is not None
    chat = _steps(_plan(env={**BASE, "BUDGET": "smoke", "INJECT": "1"},
                        overlays=["examples/ablations/sandbox_chat_forms.yaml"]))
    assert chat["rs"].config["prompt_form"] == "chat" and chat["rule_grpo"].config["data"]["prompt_format"] == "chat"


def test_reject_only_subset_keeps_only_reject_rows(tmp_path):
    import json

    st = _steps(_plan(env={**BASE, "INJECT": "0", "LOG_DIR": str(tmp_path), "REBO_DATA": "reject_only"}))["rule_grpo"]
    st.prepare()
    rows = json.loads(Path(st.inputs["data"]).read_text())
    assert rows and all(r["solution"][0] == "<reject>" for r in rows)


def test_indirect_data_asks_half_the_reject_questions_without_the_name(tmp_path):
    import json

    def rows(data: str) -> tuple[str, list[dict]]:
        st = _steps(_plan(env={**BASE, "INJECT": "0", "LOG_DIR": str(tmp_path / data), "REBO_DATA": data}))
        st["rule_grpo"].prepare()
        return st["rule_grpo"].inputs["data"], json.loads(Path(st["rule_grpo"].inputs["data"]).read_text())

    (_, full), (path, indirect) = rows("full"), rows("indirect")
    assert path.endswith("rebo_train.indirect.json") and len(indirect) == len(full)
    changed = [(a, b) for a, b in zip(full, indirect) if a != b]
    reject = [r for r in full if r["solution"][0] == "<reject>"]
    assert changed and len(changed) == len(reject) // 2  # every second one: a group keeps one question of each form
    assert all("this person" in b["prompt"] and b["solution"] == a["solution"] for a, b in changed)
    with pytest.raises(PlanError, match="REBO_DATA=indirect is an RWKU setting"):
        _plan("muse", env={"BUDGET": "test", "LOG_DIR": str(tmp_path), "REBO_DATA": "indirect"})


def test_muse_plan_skips_rwku_only_methods():
    plan = _plan("muse", env={"BUDGET": "test", "METHODS": "rule_grpo ga", "LOG_DIR": "/nonexistent-log"})
    tp = plan.targets[0]
    assert [s.name for s in tp.steps] == ["data", "rs", "rule_grpo", "eval"]  # one evaluator for every model
    assert tp.notes == ["ga: applies to rwku only; not run on MUSE"]
    st = _steps(plan)["rule_grpo"]
    assert st.config["worker"]["reward"]["reward_fn"] == "forget_two_stage_abs"
    assert st.config["data"]["train_files"].endswith("data/MUSE/books/rl_rejection_with_neighbor.json")
    ev = _steps(plan)["eval"]
    assert list(ev.results) == ["original", "rs", "rule_grpo"]
    assert any(a.startswith("rule_grpo:RULE (GRPO)=") for a in ev.cmd)  # the row label goes with each model


def test_plan_marks_done_stages_and_changed_settings(tmp_path):
    import json

    env = {**BASE, "INJECT": "0", "LOG_DIR": str(tmp_path)}
    rs = _steps(_plan(env=env))["rs"]
    assert not rs.done
    rs.run_dir.mkdir(parents=True)
    rs.marker.write_text(json.dumps({"finished": "then", "cmd": rs.cmd}))
    again = _steps(_plan(env=env))["rs"]
    assert again.done and "other settings" not in again.reason
    changed = _steps(_plan(env={**env, "RS_STEPS": "5"}))["rs"]
    assert changed.done and "made with other settings" in changed.reason


# ------------------------------------------------------------------------------------------- dry runs
@pytest.mark.parametrize("inject", ["0", "1"])
@pytest.mark.parametrize("method", list(METHODS))
def test_dry_run_every_method_and_protocol(method, inject, capsys):
    rc = main(["rwku", "--dry-run"], env={**BASE, "INJECT": inject, "METHODS": method})
    out = capsys.readouterr().out
    assert rc == 0 and "== target 101_Elowen_Marsh" in out
    assert f"{METHODS[method].label} ({method}): run" in out or (method == "base" and inject == "0")
    rc = main(["muse", "--dry-run"], env={"BUDGET": "test", "INJECT": "0", "METHODS": method})
    assert rc == 0


@pytest.mark.parametrize("inject", ["0", "1"])
@pytest.mark.parametrize("script", RWKU_SCRIPTS + MUSE_SCRIPTS)
def test_dry_run_through_every_runner_script(script, inject, tmp_path):
    """The real entry point, every method (RWKU) in one plan; MUSE refuses the sandbox with a message."""
    muse = script in MUSE_SCRIPTS
    methods = "rule_grpo rule_ppo rule_rpp" if muse else ALL_METHODS
    res = subprocess.run(["bash", script, "--dry-run"], cwd=REPO, env=_env(tmp_path, INJECT=inject, METHODS=methods),
                         capture_output=True, text=True, timeout=120)
    if muse and inject == "1":
        assert res.returncode == 2 and "INJECT=1 is RWKU only" in res.stderr
        return
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for name in methods.split():
        if name != "base" or inject == "1":
            assert f"({name}): run" in out, name
    if "ablation_without_rs" in script:
        assert "rebo_start=original" in out
    if "ablation_without_boundary" in script:
        assert "rebo_train.reject_only.json" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_default_methods_of_experiment_scripts(tmp_path):
    res = subprocess.run(["bash", "examples/exp_target/RWKU/baselines.sh", "--dry-run"], cwd=REPO,
                         env=_env(tmp_path, INJECT="0"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "METHODS=ga npo simnpo rt" in res.stdout and "/rwku/baselines/" in res.stdout


# ------------------------------------------------------------------------------------------- --help of every CLI
@pytest.mark.parametrize("argv,expected", [
    (["-m", "verl.pipeline", "rwku", "--help"], ["REBO_START", "REBO_REF", "REBO_DATA", "EXP_MUSE", "MUSE_LIMIT",
                                                 "RULE (Reinforce++)", "--dry-run"]),
    (["-m", "RS.train", "--help"], ["stages (--stage):", "simnpo_gdr", "peak learning rate"]),
    (["-m", "verl.trainer.main", "--help"], ["trainer.n_workers", "worker.rollout.n", "Responses sampled per prompt"]),
    (["-m", "verl.eval", "--help"], ["--protocol", "--batch_size"]),
])
def test_every_cli_documents_its_flags(argv, expected):
    res = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for text in expected:
        assert text in res.stdout, text


def test_every_argparse_flag_has_a_help_text():
    from RS.args import build_parser as rs_parser
    from verl.eval.cli import build_parser as eval_parser
    from verl.pipeline.cli import build_parser as pipeline_parser

    for parser in (rs_parser(), eval_parser(), pipeline_parser()):
        bare = [a.dest for a in parser._actions if not a.help]
        assert not bare, (parser.prog, bare)


# ------------------------------------------------------------------------------------------- the release's settings
def test_paper_budget_defaults_to_each_benchmarks_paper_model():
    muse = resolve_settings("muse", {"BUDGET": "paper"}, {}, has_gpu=lambda: 0)
    rwku = resolve_settings("rwku", {"BUDGET": "paper", "TARGETS": SAMPLE_TARGET}, {}, has_gpu=lambda: 0)
    assert (muse.model, muse.exp) == ("muse-bench/MUSE-Books_target", "MUSE-Books_target_paper")
    assert (rwku.model, rwku.protocol) == ("meta-llama/Meta-Llama-3-8B-Instruct", "paper")
    assert resolve_settings("muse", {"BUDGET": "smoke"}, {}, has_gpu=lambda: 0).model == "smollm2-135m-instruct"
    given = resolve_settings("muse", {"BUDGET": "paper", "MODEL": "smollm2-135m-instruct"}, {}, has_gpu=lambda: 0)
    assert given.model == "smollm2-135m-instruct"


def test_paper_plan_runs_the_releases_evaluator_and_cpu_budgets_keep_theirs():
    release = {"user_turn": "verbatim", "stop_ids": "eot", "utility_bos": "rwku", "bbh_stop": "none",
               "fluency_tokenizer": "word_tokenize"}
    paper = _steps(_plan(env={**BASE, "BUDGET": "paper", "INJECT": "0", "GPUS": "0"}))
    assert {k: paper["eval"].config[k] for k in release} == release
    assert paper["rule_grpo"].config["data"]["user_turn"] == "verbatim"
    assert (paper["rule_grpo"].config["data"]["sampler"], paper["rule_grpo"].config["data"]["seed"]) == ("release", 42)
    assert paper["rs"].config["user_turn"] == "verbatim"
    for budget, inject in (("smoke", "1"), ("smoke", "0"), ("test", "0")):
        cpu = _steps(_plan(env={**BASE, "BUDGET": budget, "INJECT": inject}))
        assert {k: cpu["eval"].config[k] for k in release} == {
            "user_turn": "template", "stop_ids": "all", "utility_bos": "single", "bbh_stop": "question",
            "fluency_tokenizer": "treebank"}, budget
        assert (cpu["rule_grpo"].config["data"]["sampler"], cpu["rule_grpo"].config["data"]["user_turn"]) == (
            "project", "template")
        assert cpu["rs"].config["user_turn"] == "template"


def test_muse_paper_plan_reproduces_the_releases_run():
    steps = _steps(_plan("muse", env={"BUDGET": "paper", "GPUS": "0", "LOG_DIR": "/nonexistent-log"}))
    assert steps["rs"].inputs["model"] == "muse-bench/MUSE-Books_target"
    assert (steps["rs"].config["muse_icl"], steps["rs"].config["cutoff_len"]) == ("knowmem/forget_qa_icl", 0)
    rebo = steps["rule_grpo"]
    assert rebo.config["trainer"]["total_epochs"] == 1 and rebo.output.endswith("global_step_<last>/actor")
    assert steps["eval"].config["verbmem_prompt"] == "release"
    fixed = _steps(_plan("muse", env={"BUDGET": "paper", "GPUS": "0", "LOG_DIR": "/x", "REBO_STEPS": "7"}))
    assert fixed["rule_grpo"].config["trainer"]["total_epochs"] is None  # REBO_STEPS: exactly that many steps
    assert fixed["rule_grpo"].output.endswith("global_step_7/actor")
    smoke = _steps(_plan("muse", env={"BUDGET": "smoke", "LOG_DIR": "/x"}))
    assert smoke["eval"].config["verbmem_prompt"] == "muse"
    assert smoke["rs"].config["muse_icl"] == "knowmem/train_qa_icl"


def test_rs_checkpoint_variable_picks_the_rs_epoch(capsys):
    plan = _plan(env={**BASE, "BUDGET": "paper", "INJECT": "0", "GPUS": "0", "RS_CHECKPOINT": "3"})
    assert plan.config.rs_checkpoint == "checkpoint-epoch-3"
    assert _steps(plan)["rule_grpo"].inputs["model"].endswith("/rs/checkpoint-epoch-3")
    default = _plan(env={**BASE, "BUDGET": "paper", "INJECT": "0", "GPUS": "0"})
    assert default.config.rs_checkpoint == "checkpoint-epoch-2"
    assert main(["rwku", "--dry-run"], env={**BASE, "RS_CHECKPOINT": "4"}) == 2
    assert "RS_CHECKPOINT must be an RS epoch, 1 | 2 | 3" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- memory and disk plans
PAPER = {**BASE, "BUDGET": "paper", "INJECT": "0"}


def test_dry_run_prints_the_memory_plan_and_sizes_vllm(capsys):
    rc = main(["rwku", "--dry-run"], env={**PAPER, "METHODS": "rule_grpo rule_ppo", "GPUS": "0,1,2,3"})
    out = capsys.readouterr().out
    assert rc == 0 and "memory plan per GPU (GB = 1e9 bytes): 4 x 80.0 GB" in out
    assert "8,030,261,248 parameters" in out and "disk plan (GB = 1e9 bytes) under LOG_DIR=" in out
    assert "rule_ppo: without offload or LoRA" in out and "chose offload optimizer" in out
    steps = _steps(_plan(env={**PAPER, "METHODS": "rule_grpo rule_ppo", "GPUS": "0,1,2,3"}))
    assert "worker.rollout.gpu_memory_utilization=0.53" in steps["rule_grpo"].cmd  # sized, not the fixed 0.5
    assert steps["rule_grpo"].config["worker"]["actor"]["offload_optimizer"] is False
    assert steps["rule_ppo"].config["worker"]["critic"]["offload_optimizer"] is True


def test_fewer_gpus_choose_offload_or_lora_in_the_commands():
    steps = _steps(_plan(env={**PAPER, "METHODS": "rule_grpo", "GPUS": "0"}))
    assert "worker.actor.offload_params=true" in steps["rule_grpo"].cmd
    assert steps["rule_grpo"].config["worker"]["ref"]["offload_params"] is True
    rs = steps["rs"]
    assert rs.config["finetuning_type"] == "lora" or "RS/configs/accelerate_fsdp_offload.yaml" in rs.cmd
    assert rs.memory.fits and not rs.memory.configured.fits


def test_a_plan_that_cannot_fit_stops_before_any_work(tmp_path, monkeypatch, capsys):
    from verl.pipeline import plan, settings

    for module in (settings, plan):  # one visible GPU of 24 GB, for the settings' defaults and the plan's check
        monkeypatch.setattr(module, "gpu_count", lambda: 1)
    env = {**PAPER, "METHODS": "rule_ppo", "GPUS": "0", "GPU_MEMORY": "24", "LOG_DIR": str(tmp_path)}
    plan = _plan(env=env)
    ppo = next(p for p in plan.problems if p.startswith("rule_ppo (ReBO) does not fit 1 x 24.0 GB"))
    assert "Would fit with: " in ppo and "worker.rollout.max_num_seqs=" in ppo
    assert main(["rwku"], env=env) == 1
    err = capsys.readouterr().err
    assert "cannot run" in err and "does not fit 1 x 24.0 GB" in err
    assert not list(tmp_path.iterdir())  # refused before the first stage


def test_a_users_setting_wins_and_is_refused_when_it_cannot_fit(tmp_path):
    overlay = tmp_path / "no_offload.yaml"
    overlay.write_text("args:\n  rebo: {worker: {actor: {offload_params: false}, ref: {offload_params: false}}}\n")
    plan = _plan(env={**PAPER, "METHODS": "rule_grpo", "GPUS": "0"}, overlays=[str(overlay)])
    assert any("rule_grpo (ReBO) does not fit" in p and "(you set worker.actor.offload_params=false" in p
               for p in plan.problems)
    assert _steps(plan)["rule_grpo"].config["worker"]["actor"]["offload_params"] is False


def test_a_run_that_would_not_fit_on_the_disk_is_refused(tmp_path, monkeypatch, capsys):
    from verl.pipeline import resources

    monkeypatch.setattr(resources, "free_bytes", lambda _: (1000, "/tiny"))
    env = {**BASE, "LOG_DIR": str(tmp_path)}
    plan = _plan(env=env)
    assert any(p.startswith("disk: the stages still to run write") for p in plan.problems)
    assert main(["rwku"], env=env) == 1 and "/tiny has 0.0 GB free" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # a plan for another machine's GPUs shows its disk need without refusing over this disk
    assert not any(p.startswith("disk:") for p in _plan(env={**PAPER, "GPUS": "0,1"}).problems)


def test_gpu_memory_must_be_a_size(capsys):
    assert main(["rwku", "--dry-run", "--gpu-memory", "lots"], env=BASE) == 2
    assert "GPU_MEMORY is GB per GPU" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- seeds
SANDBOX = {**BASE, "INJECT": "1", "METHODS": "rule_grpo ga"}


def test_seeds_run_every_sampling_stage_once_per_seed_and_share_the_rest():
    plan = _plan(env={**SANDBOX, "SEEDS": "1,2,3"})
    steps = _steps(plan)
    assert [n for n in steps if not n.startswith("seed")] == ["inject", "eval"]  # once per target
    assert list(steps["eval"].results) == ["base", "original"] and steps["eval"].shared
    for k in (1, 2, 3):
        rs, rebo, ga, ev = (steps[f"seed{k}/{n}"] for n in ("rs", "rule_grpo", "ga", "eval"))
        assert rs.config["seed"] == k and ["--seed", str(k)] == rs.cmd[-2:]  # RS.train --seed
        assert ga.config["seed"] == k and "--seed" in ga.cmd  # baselines: RS.train --seed
        assert rebo.config["trainer"]["seed"] == k and f"trainer.seed={k}" in rebo.cmd  # ReBO trainer.seed
        assert rebo.inputs["model"] == str(rs.run_dir)  # each seed's ReBO starts from that seed's RS
        assert rs.inputs["model"] == steps["inject"].output  # every seed starts from the one injected model
        assert rs.run_dir.parts[-2:] == (f"seed{k}", "rs") and rebo.run_dir.parts[-2:] == (f"seed{k}", "rule_grpo")
        assert ev.run_dir.parts[-2:] == (f"seed{k}", "results") and list(ev.results) == ["rs", "rule_grpo", "ga"]
        assert rebo.config["trainer"]["experiment_name"] == f"rule_grpo_{SAMPLE_TARGET}_seed{k}"
        assert (rs.seed, rebo.seed, ev.seed) == (k, k, k) and not rs.shared


def test_without_seeds_the_layout_and_the_configs_own_seeds_stay(capsys):
    steps = _steps(_plan(env=SANDBOX))
    assert list(steps) == ["inject", "rs", "rule_grpo", "ga", "eval"]
    assert steps["rs"].run_dir.name == "rs" and steps["rs"].run_dir.parent.name == SAMPLE_TARGET
    assert "--seed" not in steps["rs"].cmd and steps["rs"].config["seed"] == 42  # RS/configs/smollm2/rs.yaml
    assert not any(a.startswith("trainer.seed=") for a in steps["rule_grpo"].cmd)
    assert steps["rule_grpo"].config["trainer"]["seed"] == 1  # the ReBO config's own
    assert list(steps["eval"].results) == ["base", "original", "rs", "rule_grpo", "ga"]  # one results folder
    assert main(["rwku", "--dry-run"], env=SANDBOX) == 0
    assert "SEEDS: one run, each stage at its own config's seed (one seed: one draw" in capsys.readouterr().out


def test_dry_run_shows_each_seed(capsys):
    assert main(["rwku", "--dry-run", "--seeds", "1,2,3"], env=SANDBOX) == 0
    out = capsys.readouterr().out
    assert "SEEDS=1,2,3: RS (--seed), ReBO (trainer.seed) and the baselines (--seed) once per seed" in out
    for k in (1, 2, 3):
        assert f"RS {SAMPLE_TARGET} seed {k}: run" in out and f"ReBO rule_grpo {SAMPLE_TARGET} seed {k}: run" in out
        assert f"trainer.seed={k}" in out and f"--seed {k}" in out
        assert f"/seed{k}/results/{{rs,rule_grpo,ga}}.json" in out
    assert out.count(f"inject {SAMPLE_TARGET}: run") == 1


@pytest.mark.parametrize("value,message", [("1,x", "SEEDS must be a comma list of whole numbers"),
                                           ("-1", "SEEDS must be a comma list")])
def test_bad_seeds_fail_with_a_message(value, message, capsys):
    assert main(["rwku", "--dry-run"], env={**BASE, "SEEDS": value}) == 2
    assert message in capsys.readouterr().err


def test_seed_markers_say_the_seed_and_skip_only_their_seed(tmp_path):
    import json

    from verl.pipeline.runner import run_step

    env = {**SANDBOX, "LOG_DIR": str(tmp_path), "SEEDS": "1,2"}
    steps = _steps(_plan(env=env))
    for name in ("inject", "seed2/rs"):
        st = steps[name]
        st.cmd = ["-c", "pass"]  # the marker, not the training, is under test
        run_step(st, os.environ.copy())
    assert json.loads(steps["seed2/rs"].marker.read_text())["seed"] == 2
    assert json.loads(steps["seed2/rs"].marker.read_text())["shared"] is False
    inject = json.loads(steps["inject"].marker.read_text())
    assert inject["shared"] is True and inject["seed"] == 42  # the injection's own config seed, for every seed
    again = _steps(_plan(env=env))
    assert again["seed2/rs"].done and not again["seed1/rs"].done and again["inject"].done
    # a third seed reuses the injection
    assert _steps(_plan(env={**env, "SEEDS": "1,2,3"}))["inject"].done


def test_muse_seeds_share_the_data_and_the_original():
    steps = _steps(_plan("muse", env={"BUDGET": "test", "LOG_DIR": "/nonexistent-log", "SEEDS": "4,5"}))
    assert list(steps) == ["data", "eval", "seed4/rs", "seed4/rule_grpo", "seed4/eval", "seed5/rs", "seed5/rule_grpo",
                           "seed5/eval"]
    assert list(steps["eval"].results) == ["original"] and steps["seed5/rule_grpo"].config["trainer"]["seed"] == 5


# ------------------------------------------------------------------------------------------- evaluation, ReBO data
def test_one_evaluator_per_results_folder_skips_each_finished_model(tmp_path):
    env = {**SANDBOX, "LOG_DIR": str(tmp_path), "SEEDS": "1"}
    ev = _steps(_plan(env=env))["seed1/eval"]
    assert ev.cmd[:2] == ["-m", "verl.eval"] and "--output_dir" in ev.cmd
    assert sum(a == "--model" for a in ev.cmd) == 3
    ev.results["rs"].parent.mkdir(parents=True)
    ev.results["rs"].write_text("{}")  # RS scored already: only the other two are asked for
    ev = _steps(_plan(env=env))["seed1/eval"]
    assert not ev.done and sum(a == "--model" for a in ev.cmd) == 2 and not any(a.startswith("rs:") for a in ev.cmd)
    for path in ev.results.values():
        path.write_text("{}")
    assert _steps(_plan(env=env))["seed1/eval"].done


def test_rebo_trains_on_the_filtered_file_with_its_hash_in_the_plan(tmp_path):
    import json

    from data.boundary import boundary_split
    from data.rwku import resolve_target

    for budget, inject, pool_rows in (("test", "0", None), ("smoke", "1", 24)):
        env = {**BASE, "BUDGET": budget, "INJECT": inject, "LOG_DIR": str(tmp_path / budget), "SEEDS": "1,2"}
        steps = _steps(_plan(env=env))
        one, two = steps["seed1/rule_grpo"], steps["seed2/rule_grpo"]
        assert one.config["data"]["train_files"] == one.inputs["data"] == two.inputs["data"]  # one file per target
        assert one.inputs["data"].endswith(f"{SAMPLE_TARGET}/rebo_train.json") and len(one.inputs["data_sha256"]) == 64
        one.prepare()
        rows = json.loads(Path(one.inputs["data"]).read_text())
        suite = {s["query"] for s in boundary_split(resolve_target(SAMPLE_TARGET)).suite}
        assert rows and not suite & {r["prompt"] for r in rows}  # ReBO never sees a boundary-suite question
        assert pool_rows is None or len(rows) == pool_rows  # the sandbox: only the pool the injection taught
        assert Path(one.inputs["data"]).with_name("rebo_train.split.json").is_file()  # the split, recorded
        from verl.pipeline.plan import rows_sha256

        assert rows_sha256(rows) == one.inputs["data_sha256"] == one.digests["data"]


def test_boundary_share_must_agree_between_injection_and_evaluator(tmp_path):
    overlay = tmp_path / "share.yaml"
    overlay.write_text("sandbox:\n  eval: {boundary_share: 0.1}\n")
    with pytest.raises(PlanError, match="boundary share: the injection holds out 0.05 of the ReBO groups, the "
                                        "evaluator 0.1"):
        _plan(env={**BASE, "BUDGET": "smoke", "INJECT": "1"}, overlays=[str(overlay)])


@pytest.mark.parametrize("epoch, keep", [("", "2"), ("2", "2"), ("1", "2,1"), ("3", "2,3")])
def test_paper_budget_keeps_the_rs_checkpoint_rebo_starts_from(epoch, keep):
    """The paper budget keeps one RS epoch checkpoint beyond --save_keep_epochs: the one RS_CHECKPOINT names is never
    removed, one ReBO checkpoint, no baseline epoch checkpoints."""
    steps = _steps(_plan(env={**PAPER, "METHODS": "rule_grpo ga", "GPUS": "0,1,2,3", "RS_CHECKPOINT": epoch}))
    rs = steps["rs"].config
    assert rs["save_total_limit"] == 1 and rs["save_keep_epochs"] == keep
    assert steps["rule_grpo"].config["trainer"]["save_limit"] == 1
    assert steps["ga"].config["save_strategy"] == "no"
