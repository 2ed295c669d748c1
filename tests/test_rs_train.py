"""RS.train on the tiny random model: label masking, checkpoints, LoRA export, flag errors, the NaN guard, pickled
model folders refused, the output folder overwritten only on request, a free port for a run of one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from RS.args import TrainArgs, load_yaml_config, parse_args
from RS.datasets import RWKU_RT_TEMPLATES, build_data, collate
from RS.stages import STAGES
from verl.utils.chat import IGNORE_INDEX
from verl.utils.cli import UserError

REPO = Path(__file__).resolve().parents[1]


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _args(model, target, out, **kw) -> TrainArgs:
    base = dict(model_name_or_path=model, target=target, output_dir=str(out), max_samples=4, cutoff_len=64,
                per_device_train_batch_size=2, learning_rate=1e-3, warmup_steps=0, num_train_epochs=1,
                logging_steps=1, plot_loss=False, eval_probes=False, overwrite_output_dir=True)
    base.update(kw)
    return TrainArgs(**base)


def test_label_masking_and_collator(tiny_model_path, target_name):
    tok = _tok(tiny_model_path)
    args = _args(tiny_model_path, target_name, "unused", max_samples=3)
    data = build_data(args, tok, STAGES["rt"])
    for ex in data.train:
        labels, ids = ex["labels"], ex["input_ids"]
        n_prompt = next(i for i, v in enumerate(labels) if v != IGNORE_INDEX)
        assert n_prompt > 5 and all(v == IGNORE_INDEX for v in labels[:n_prompt])
        assert labels[n_prompt:] == ids[n_prompt:]  # every response token (and the end of turn) is learned
        assert "<|im_start|>assistant" in tok.decode(ids[:n_prompt])
        assert ids[-1] == tok.eos_token_id
    batch = collate(data.train, tok.pad_token_id)
    lengths = [len(ex["input_ids"]) for ex in data.train]
    for row, n in enumerate(lengths):
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all() and batch["attention_mask"][row, n:].eq(0).all()
    # RWKU's RT baseline: same questions, entity-free refusals
    rt = build_data(_args(tiny_model_path, target_name, "unused", max_samples=3, dataset="rwku_rt"), tok, STAGES["rt"])
    for ex in rt.train:
        resp = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX],
                          skip_special_tokens=True).strip()
        assert resp in RWKU_RT_TEMPLATES


def test_train_fraction_split_is_seeded(tiny_model_path, target_name):
    tok = _tok(tiny_model_path)
    a = build_data(_args(tiny_model_path, target_name, "u", max_samples=0, train_fraction=0.8), tok, STAGES["rt"])
    b = build_data(_args(tiny_model_path, target_name, "u", max_samples=0, train_fraction=0.8), tok, STAGES["rt"])
    assert a.heldout == b.heldout and len(a.heldout) > 0
    assert abs(len(a.train) - 4 * len(a.heldout)) <= 4
    train_q = {tok.decode(ex["input_ids"]) for ex in a.train}
    assert not any(r["instruction"] in q for r in a.heldout for q in train_q)


def _logits(path, text="Who is the author of Carrie?"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = _tok(path)(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_checkpoint_reload_identical_logits(tiny_model_path, tmp_path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from RS.checkpoint import save_hf_checkpoint

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # so the saved weights differ from the original folder
    ids = _tok(tiny_model_path)("Who is the author of Carrie?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(ids).logits
    out = save_hf_checkpoint(Accelerator(), model, _tok(tiny_model_path), tmp_path / "ck")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert torch.equal(_logits(out), want)
    assert not list(tmp_path.glob(".ck.tmp.*"))  # no temp folder left behind


def test_train_run_outputs_and_epoch_checkpoints(tiny_model_path, target_name, tmp_path):
    from RS.train import train

    out = train(_args(tiny_model_path, target_name, tmp_path / "run", num_train_epochs=2, train_fraction=0.75,
                      plot_loss=True))
    for name in ("DONE", "train_log.jsonl", "loss.png", "run_args.json", "run_info.json", "heldout.json",
                 "model.safetensors", "checkpoint-epoch-1/model.safetensors", "checkpoint-epoch-2/config.json"):
        assert (out / name).exists(), name
    info = json.loads((out / "run_info.json").read_text())
    assert info["data_sha256"] and all(len(h) == 64 for h in info["data_sha256"].values())
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    assert torch.equal(_logits(out), _logits(out / "checkpoint-epoch-2"))  # final == last epoch
    assert not torch.equal(_logits(out), _logits(tiny_model_path))  # it trained


def test_lora_merged_export_loads(tiny_model_path, tmp_path):
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from RS.checkpoint import save_hf_checkpoint

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn_like(p))  # non-zero adapter
    model.eval()
    ids = _tok(tiny_model_path)("Who is the author of Carrie?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(ids).logits
    live = {k: v.clone() for k, v in model.state_dict().items()}
    out = save_hf_checkpoint(Accelerator(), model, _tok(tiny_model_path), tmp_path / "lora")
    assert (out / "adapter" / "adapter_config.json").is_file()
    got = _logits(out)  # plain from_pretrained, no peft
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, _logits(tiny_model_path), atol=1e-3)
    # peft's merge writes W + alpha / r * B @ A, under the base model's keys
    from safetensors.torch import load_file

    saved, n_merged = load_file(str(out / "model.safetensors")), 0
    for key, w in live.items():
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            want_w = w + 8 / 4 * live[f"{stem}.lora_B.default.weight"] @ live[f"{stem}.lora_A.default.weight"]
            torch.testing.assert_close(saved[stem.removeprefix("base_model.model.") + ".weight"], want_w)
            n_merged += 1
    assert n_merged >= 7 * 2  # every linear layer of both blocks
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in live.items())  # the training model is untouched


def test_lora_training_run(tiny_model_path, target_name, tmp_path):
    from RS.train import train

    out = train(_args(tiny_model_path, target_name, tmp_path / "lora_run", finetuning_type="lora", lora_rank=4,
                      save_strategy="no", max_steps=1))
    assert (out / "model.safetensors").is_file() and (out / "adapter").is_dir()
    _logits(out)


def test_unknown_flag_and_yaml_key(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--target", "1", "--output_dir", "o", "--learning_rat", "1e-5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 1e-5\nnum_epochs: 3\n")
    with pytest.raises(ValueError, match="num_epochs"):
        load_yaml_config(bad)
    with pytest.raises(ValueError, match="stage"):
        parse_args(["--stage", "nope", "--target", "1", "--output_dir", "o"])


def test_config_then_flags_precedence():
    args = parse_args(["--config", str(REPO / "RS/configs/smollm2/rs.yaml"), "--target", "1", "--output_dir", "o",
                       "--learning_rate", "3e-5", "--bf16"])
    assert args.learning_rate == 3e-5 and args.bf16 is True and args.cutoff_len == 128


def test_every_config_parses():
    for path in sorted((REPO / "RS/configs").glob("*.yaml")):
        if path.name.startswith("accelerate_"):
            continue
        parse_args(["--config", str(path), "--target", "1", "--output_dir", "o"])


def test_nan_guard_keeps_last_good_checkpoint(tiny_model_path, target_name, tmp_path, monkeypatch):
    from RS import losses
    from RS.train import NonFiniteLossError, train

    real, calls = losses.nll_loss, {"n": 0}

    def flaky(logits, labels, *rest):
        calls["n"] += 1
        val = real(logits, labels, *rest)
        return val * float("nan") if calls["n"] > 2 else val  # epoch 1 (2 steps) fine, then NaN

    monkeypatch.setattr(losses, "nll_loss", flaky)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train(_args(tiny_model_path, target_name, tmp_path / "nan", num_train_epochs=3))
    out = tmp_path / "nan"
    failed = json.loads((out / "FAILED.json").read_text())
    assert failed["last_good_checkpoint"].endswith("checkpoint-epoch-1")
    assert (out / "checkpoint-epoch-1" / "model.safetensors").is_file() and not (out / "DONE").exists()
    _logits(out / "checkpoint-epoch-1")


def test_inject_examples_match_the_eval_prompt(tiny_model_path, target_name):
    from data.rwku import resolve_target
    from RS.quick_eval import PROBE_SUITES
    from verl.rule.prompts import build_prompt

    tok = _tok(tiny_model_path)
    args = _args(tiny_model_path, target_name, "u", max_samples=0, dataset="inject", inject_passages=False,
                 inject_probe_limit=2, inject_qa_repeat=1, cutoff_len=256)
    data = build_data(args, tok, STAGES["inject"])
    assert len(data.train) == 2 * len(PROBE_SUITES)
    probes = {rec["query"]: rec for rec in resolve_target(target_name).load("forget_level1")[:2]}
    prompts = set()
    for ex in data.train:
        n_prompt = next(i for i, v in enumerate(ex["labels"]) if v != IGNORE_INDEX)
        prompts.add(tok.decode(ex["input_ids"][:n_prompt]))
    # the training prompt of an FB probe is exactly the evaluator's prompt
    assert {build_prompt(p, "FB", tok) for p in probes.values()} <= prompts
    ex = data.train[0]
    assert ex["input_ids"][-1] == tok.eos_token_id


def test_muse_reject_dataset_needs_no_target(tiny_model_path, shared_data, tmp_path):
    """MUSE-Books RS data (reject_target_0.5.json) trains without an RWKU target; prompts stay masked."""
    tok = _tok(tiny_model_path)
    args = parse_args(["--stage", "rt", "--dataset", "muse_reject", "--model_name_or_path", tiny_model_path,
                       "--output_dir", str(tmp_path), "--max_samples", "8", "--cutoff_len", "96"])
    bundle = build_data(args, tok, STAGES["rt"], root=str(shared_data))
    assert len(bundle.train) == 8 and bundle.files[0].name == "reject_target_0.5.json"
    ex = bundle.train[0]
    n_prompt = sum(1 for x in ex["labels"] if x == IGNORE_INDEX)
    assert 0 < n_prompt < len(ex["labels"])
    assert "Harry" in tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])


# ---------------------------------------------------------------------------------------- effective batch
@pytest.mark.parametrize("procs, plan", [(1, (2, 4)), (2, (2, 2)), (4, (2, 1)), (8, (1, 1))])
def test_paper_batch_plan_keeps_batch_8_and_76_steps(procs, plan):
    from RS.args import batch_plan, steps_per_epoch

    cfg = load_yaml_config(REPO / "RS/configs/llama3_8b/rs.yaml")
    per_device, accum = batch_plan(cfg["total_batch_size"], cfg["per_device_train_batch_size"], procs)
    assert (per_device, accum) == plan and per_device * procs * accum == 8
    assert 2 * steps_per_epoch(300, per_device, procs, accum) == 76  # checkpoint-epoch-2 = the release's checkpoint-76


def test_batch_plan_errors_and_off():
    from RS.args import batch_plan

    assert batch_plan(0, 2, 4, 3) == (2, 3)  # off: as given
    assert batch_plan(12, 8, 2) == (6, 1) and batch_plan(12, 4, 2) == (3, 2)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        batch_plan(8, 2, 3)


@pytest.mark.slow
@pytest.mark.parametrize("procs", [1, 2])
def test_effective_batch_same_steps_on_1_and_2_gloo_processes(procs, tiny_model_path, target_name, tmp_path):
    """torchrun on CPU (gloo): 10 examples, total batch 4 -> 3 steps per epoch whatever the process count."""
    import os
    import subprocess
    import sys

    out = tmp_path / f"rs{procs}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m",
           "RS.train", "--model_name_or_path", tiny_model_path, "--target", target_name, "--output_dir", str(out),
           "--max_samples", "10", "--cutoff_len", "64", "--per_device_train_batch_size", "2", "--total_batch_size",
           "4", "--num_train_epochs", "2", "--logging_steps", "1", "--plot_loss", "false", "--num_threads", "1",
           "--warmup_steps", "0", "--eval_probes", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == procs and info["effective_batch"] == 4 and info["steps_per_epoch"] == 3
    assert info["gradient_accumulation_steps"] == (2 if procs == 1 else 1)
    assert json.loads((out / "DONE").read_text())["global_step"] == 6
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------- baselines
BASELINES = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo", "simnpo_gdr", "simnpo_klr", "rt",
             "idkdpo")


def _baseline_config(name: str, family: str) -> dict:
    """The options the pipeline's config of baseline method ``name`` sets, for that method's stage."""
    from verl.pipeline.methods import METHODS

    method = METHODS[name]
    return load_yaml_config(REPO / f"RS/configs/{family}/{method.config_stem}.yaml", stage=method.stage)


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_has_a_paper_config(name):
    from RS.args import batch_plan

    s, p = _baseline_config(name, "smollm2"), _baseline_config(name, "llama3_8b")
    assert s["stage"] == p["stage"] and s.get("dataset") == p.get("dataset")
    assert p["model_name_or_path"] == "meta-llama/Meta-Llama-3-8B-Instruct" and p["bf16"] and p["cutoff_len"] == 512
    assert p["num_train_epochs"] == 3 and "max_steps" not in p and p["learning_rate"] <= 5e-6
    assert batch_plan(p["total_batch_size"], p["per_device_train_batch_size"], 4)[0] >= 1
    assert STAGES[p["stage"]].name == p["stage"]


def test_rwku_release_hyperparameters():
    cfg = {n: _baseline_config(n, "llama3_8b") for n in BASELINES}
    assert cfg["ga"]["learning_rate"] == 6e-8 and cfg["ga"]["total_batch_size"] == 8
    assert cfg["npo"]["learning_rate"] == 2e-6 and cfg["npo"]["npo_beta"] == 0.2
    assert cfg["npo"]["total_batch_size"] == 16
    assert cfg["idkdpo"]["learning_rate"] == 5e-6 and cfg["idkdpo"]["total_batch_size"] == 8
    assert cfg["rt"]["learning_rate"] == 4e-7 and cfg["rt"]["dataset"] == "rwku_rt"
    assert STAGES["simnpo_klr"].retain == "kl" and STAGES["simnpo_klr"].needs_ref


def test_forget_and_retain_corpus_from_a_file(tiny_model_path, target_name, tmp_path):
    f = tmp_path / "positive.json"
    f.write_text(json.dumps([{"text": "Stephen King wrote many novels."}, "A second synthetic text."]))
    tok = _tok(tiny_model_path)
    data = build_data(_args(tiny_model_path, target_name, "u", dataset=f"file:{f}", retain_dataset=f"file:{f}",
                            max_samples=0), tok, STAGES["simnpo_klr"])
    assert len(data.train) == 2 and len(data.retain) == 2 and data.kind == "text" and f in data.files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"txt": "x"}]))
    with pytest.raises(ValueError, match="record 0"):
        build_data(_args(tiny_model_path, target_name, "u", dataset=f"file:{bad}"), tok, STAGES["ga"])


def test_losses_read_only_the_labelled_window_and_keep_their_values(tiny_model_path, target_name):
    """``--loss_window``: RS.train skips the logits before the batch's first labelled token; every loss equals the
    full-logit value (the default path is the full forward)."""
    from transformers import AutoModelForCausalLM

    from RS import losses
    from RS.train import _forward_logits

    tok = _tok(tiny_model_path)
    data = build_data(_args(tiny_model_path, target_name, "unused", max_samples=4), tok, STAGES["rt"])
    batch = collate(data.train, tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    with torch.no_grad():  # perturb the reference so that KL and NPO are not trivially 0
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full_ref = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, win = _forward_logits(model, batch, window=True)
        ref_logits, _ = _forward_logits(ref, batch, window=True)
        default, default_labels = _forward_logits(model, batch)
    labels = batch["labels"]
    assert torch.equal(default, full) and default_labels is labels
    first_label = int(labels.ne(IGNORE_INDEX).any(0).nonzero()[0])
    assert logits.shape[1] == labels.shape[1] - first_label + 1 < full.shape[1]  # the prompt prefix is skipped
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # noqa: E731
    close(losses.nll_loss(logits, win), losses.nll_loss(full, labels))
    close(losses.sequence_logprob(logits, win)[0], losses.sequence_logprob(full, labels)[0])
    close(losses.kl_loss(logits, ref_logits, win), losses.kl_loss(full, full_ref, labels))
    assert float(losses.kl_loss(full, full_ref, labels)) > 0


# ---------------------------------------------------------------------------------------- memory: 8B on 1-2 GPUs
def test_lora_with_gradient_checkpointing_trains_the_same_step(tiny_model_path, target_name, tmp_path, monkeypatch):
    """--gradient_checkpointing recomputes every decoder layer in the backward pass (checkpoint is called) and, with
    no dropout, gives the step the same gradients: the LoRA run ends on the same weights as without it."""
    import transformers.modeling_utils as mu
    from safetensors.torch import load_file

    from RS.train import train

    real, calls = mu.checkpoint, {"n": 0}

    def counting(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(mu, "checkpoint", counting)
    kw = dict(finetuning_type="lora", lora_rank=4, save_strategy="no", max_steps=1, max_samples=2)
    plain = train(_args(tiny_model_path, target_name, tmp_path / "plain", **kw))
    assert calls["n"] == 0
    ckpt = train(_args(tiny_model_path, target_name, tmp_path / "gc", gradient_checkpointing=True, **kw))
    assert calls["n"] >= 2  # both decoder layers of the forward pass
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(_logits(ckpt), _logits(tiny_model_path))  # it trained


@pytest.mark.parametrize("name, fields", [
    ("accelerate_fsdp.yaml", {"fsdp_offload_params": False, "fsdp_sharding_strategy": "FULL_SHARD"}),
    ("accelerate_fsdp_offload.yaml", {"fsdp_offload_params": True, "fsdp_sharding_strategy": "FULL_SHARD"}),
])
def test_fsdp_configs_parse_and_set_the_plugin_fields(name, fields):
    """The FSDP configs the memory planner names: accelerate reads them; full-shard FSDP1 with CPU-RAM-efficient
    loading (so sync_module_states), orig params (a per-parameter optimizer), offload only in the _offload one; the
    header says what fits."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = REPO / "RS/configs" / name
    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type == "FSDP" and cfg.mixed_precision == "bf16"
    fsdp = cfg.fsdp_config
    assert fsdp["fsdp_version"] == 1 and fsdp["fsdp_use_orig_params"]
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] and fsdp["fsdp_sync_module_states"]
    assert {k: fsdp[k] for k in fields} == fields
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "GB" in header and "8B" in header


def test_cpu_two_process_config_launches_local_processes():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "RS/configs/accelerate_cpu_2proc.yaml"))
    assert cfg.num_processes == 2 and cfg.distributed_type == "MULTI_GPU" and cfg.mixed_precision == "no"


def test_sync_each_batch_reaches_accelerate(monkeypatch):
    """--sync_each_batch true: accelerate's accumulate() reduces on every micro-step instead of entering no_sync;
    auto: only under FSDP (the launcher's ACCELERATE_USE_FSDP, with GPUs)."""
    from RS.train import _build_accelerator, sync_each_batch

    base = dict(target="1", output_dir="o", gradient_accumulation_steps=4)
    acc = _build_accelerator(TrainArgs(sync_each_batch="true", **base))
    assert acc.gradient_state.plugin_kwargs["sync_each_batch"] is True and acc.gradient_accumulation_steps == 4
    assert not _build_accelerator(TrainArgs(**base)).gradient_state.plugin_kwargs.get("sync_each_batch", False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sync_each_batch(TrainArgs(**base)) and not sync_each_batch(TrainArgs(sync_each_batch="false", **base))


def test_new_flags_parse_and_bad_values_stop_before_work():
    base = ["--target", "1", "--output_dir", "o"]
    args = parse_args(base + ["--gradient_checkpointing", "--sync_each_batch", "true", "--loss_reduction",
                              "global_token_mean", "--stage", "rt", "--klr_reduction", "release"])
    assert args.gradient_checkpointing and args.sync_each_batch == "true"
    assert args.loss_reduction == "global_token_mean" and args.klr_reduction == "release"
    for flags, msg in [(["--sync_each_batch", "yes"], "--sync_each_batch"), (["--loss_reduction", "sum"], "--loss_red"),
                       (["--klr_reduction", "batchmean"], "--klr_reduction"),
                       (["--stage", "npo_klr", "--loss_reduction", "global_token_mean"], "applies to a loss")]:
        with pytest.raises(ValueError, match=msg):
            parse_args(base + flags)


# ---------------------------------------------------------------------------------------- the release's reductions
def test_global_token_mean_step_gradient_is_the_whole_batch_token_mean(tiny_model_path, target_name, tmp_path,
                                                                       monkeypatch):
    """--loss_reduction global_token_mean, one process, accumulation 2 over 4 examples of different lengths: the
    gradient clipped at step 1 is that of (sum of every token's NLL) / (labelled tokens of all 4), and the logged
    loss is that number, as the release's one batch of 4 would compute."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from RS.train import train

    seen = {}
    real = Accelerator.clip_grad_norm_

    def record(self, parameters, max_norm, norm_type=2):
        params = list(parameters)
        seen.setdefault("grads", [p.grad.detach().clone() for p in params])
        return real(self, params, max_norm, norm_type)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", record)
    out = train(_args(tiny_model_path, target_name, tmp_path / "g", max_samples=4, per_device_train_batch_size=2,
                      gradient_accumulation_steps=2, max_steps=1, save_strategy="no",
                      loss_reduction="global_token_mean"))
    tok = _tok(tiny_model_path)
    data = build_data(_args(tiny_model_path, target_name, "u", max_samples=4), tok, STAGES["rt"])
    counts = [sum(1 for x in ex["labels"][1:] if x != IGNORE_INDEX) for ex in data.train]
    assert len(set(counts)) > 1  # the micro-batches differ in labelled tokens, so the reductions differ
    from RS import losses

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    total = sum(losses.nll_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                b["labels"], "sum") for b in (collate([ex], tok.pad_token_id) for ex in data.train))
    want = total / sum(counts)
    want.backward()
    row = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert row["loss"] == pytest.approx(want.item(), rel=1e-5)
    for got, p in zip(seen["grads"], model.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6)


def test_rs_model_loading_refuses_pickled_folder(tmp_path, tiny_model_path):
    from RS.train import _load_model

    folder = tmp_path / "bin_model"
    shutil.copytree(tiny_model_path, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="only pickled weights"):
        _load_model(TrainArgs(model_name_or_path=str(folder), output_dir=str(tmp_path / "o"), target="1"))


def test_rs_process_state_ignores_a_taken_inherited_master_port():
    """With LOCAL_RANK set (as accelerate leaves RANK/WORLD_SIZE/LOCAL_RANK in the environment of a process that ran
    it, here pytest's), accelerate opens a gloo group even for one CPU process, on the inherited MASTER_PORT, which
    the parent's own group may hold (EADDRINUSE at start): a run of one takes a free port of its own."""
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


def test_rs_overwrite_output_dir_clears_the_old_run(tmp_path):
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
