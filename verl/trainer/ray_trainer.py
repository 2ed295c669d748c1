"""``RayPPOTrainer``: the single-controller ReBO/PPO loop.

One step (each phase timed as ``timing/<phase>``):
rollout n responses per prompt (``gen``) -> outcome reward on the last response token (``reward``) ->
old log-probs (``old_log_prob``, only when needed) -> reference log-probs (``ref``) -> critic values (``values``,
PPO) -> advantages (``adv``) -> critic update (``update_critic``) -> actor update (``update_actor``) ->
validation (``validation``) -> checkpoint (``save``).

Old log-probs: with one optimizer step per batch and ``ppo_epochs=1`` the policy that sampled the rollouts is
the one being updated, so ``old = current`` and the actor uses its own detached log-probs (ratio 1, same gradient)
instead of an extra forward pass. Any other setting (several mini-batches or epochs, KL in the reward) computes
them explicitly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from verl import core_algos
from verl.config import PPOConfig, redact
from verl.models.embedded import load_tokenizer
from verl.protocol import DataProto, to_object_array
from verl.single_controller import make_worker_group
from verl.trainer.dataset import RLDataset, StatefulSampler
from verl.trainer.metrics import batch_metrics, label_mean, ref_kl_metrics
from verl.trainer.seqlen_balancing import balanced_order
from verl.utils.checkpoint import CheckpointManager
from verl.utils.cli import ConfigError, UserError
from verl.utils.curves import write_curves
from verl.utils.io import atomic_write_json, atomic_write_text
from verl.utils.progress import progress
from verl.utils.rouge import rougel_recall
from verl.utils.runinfo import file_sha256, run_info
from verl.utils.runlock import RunDirLock
from verl.utils.text import has_word
from verl.utils.timer import timed
from verl.utils.tracking import Tracker
from verl.workers.reward.registry import get_reward_fn, score_batch

logger = logging.getLogger("verl.trainer")


# keys a resume may change: the step budget, and saving/logging (they change no trained number)
RESUME_MUTABLE_KEYS = ("trainer.total_steps", "trainer.save_freq", "trainer.save_limit", "trainer.resume",
                       "trainer.keep_resume_state",
                       "trainer.allow_config_change", "trainer.logger", "trainer.progress_bar",
                       "trainer.log_generations", "trainer.save_dir", "trainer.experiment_name", "trainer.project_name")


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two config dicts, except RESUME_MUTABLE_KEYS."""
    out = []
    for k in sorted(set(old) | set(new)):
        key = f"{prefix}{k}"
        if key in RESUME_MUTABLE_KEYS:
            continue
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, key + ".")
        elif a != b and not (isinstance(a, list) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


class TrainingDivergedError(UserError, RuntimeError):
    """A NaN/inf loss or gradient stopped the run; the last complete checkpoint is untouched."""


def balance_batch(data: DataProto, k: int) -> DataProto:
    """Rows reordered as the release before its updates (``trainer.balance_batch``): ``k`` equal-size partitions
    balancing the attention-mask token count, partition ``r`` as the ``r``-th contiguous chunk (worker ``r``'s with
    ``k`` = the worker count), each in row order. Advantages, returns and every other column move with their row, so
    per-group estimates (GRPO, RLOO) computed before are unchanged."""
    lengths = data.batch["attention_mask"].sum(-1).tolist()
    return data[balanced_order(lengths, k)]


def pad_to_multiple(data: DataProto, k: int) -> tuple[DataProto, int]:
    """Repeat leading rows so ``len(data) % k == 0`` (for dispatch); returns (padded, number of pad rows)."""
    n_pad = (-len(data)) % k
    if n_pad == 0:
        return data, 0
    return DataProto.concat([data, data[list(range(n_pad))]]), n_pad


def decode_responses(tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(responses, mask)]


def row_extras(data: DataProto) -> list[dict]:
    keys = [k for k in data.non_tensor_batch if k.startswith("extra.")]
    return [{k[len("extra."):]: data.non_tensor_batch[k][i] for k in keys} for i in range(len(data))]


class RayPPOTrainer:
    """Builds datasets, reward, logger, checkpoints and the worker group from a resolved ``PPOConfig``."""

    def __init__(self, config: PPOConfig):
        self.config = cfg = config
        self.run_dir = Path(cfg.run_dir())
        self.lock = RunDirLock(self.run_dir, "trainer").acquire()  # a second trainer on this dir stops here
        self.wg = self.tracker = None
        try:
            self._init(cfg)
        except BaseException:  # SIGTERM (SystemExit) included: workers already started are closed too
            try:
                if self.wg is not None:
                    self.wg.shutdown()
            finally:
                self.lock.release()
            raise

    def _init(self, cfg: PPOConfig) -> None:
        self.tokenizer = load_tokenizer(cfg.worker.actor.model_path)
        d = cfg.data
        fmt = dict(prompt_format=d.prompt_format, system_prompt=d.system_prompt, muse_icl=d.muse_icl,
                   user_turn=d.user_turn)
        self.train_ds = RLDataset(d.train_files, self.tokenizer, d.max_prompt_length, d.prompt_key, d.answer_key,
                                  d.rwku.data_root, **fmt)
        self.val_ds = None
        if d.val_files:
            self.val_ds = RLDataset(d.val_files, self.tokenizer, d.max_prompt_length, d.prompt_key, d.answer_key,
                                    d.rwku.data_root, d.val_max_samples, **fmt)
        self.sampler = self._new_sampler()
        if cfg.trainer.total_epochs:  # the release's epoch budget: whole batches of the rows kept
            cfg.trainer.total_steps = cfg.trainer.total_epochs * self.sampler.batches_per_epoch
        self.reward_fn = get_reward_fn(cfg.worker.reward.reward_fn, **cfg.worker.reward.kwargs)
        a = cfg.algorithm
        if a.kl_type == "adaptive":
            self.kl_ctrl = core_algos.AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
        else:
            self.kl_ctrl = core_algos.FixedKLController(a.kl_coef)
        self.ckpt = CheckpointManager(self.run_dir, cfg.trainer.save_limit, cfg.trainer.resume_state)
        self.global_step = 0
        self.data_sha256 = {"train": file_sha256(self.train_ds.path),
                            **({"val": file_sha256(self.val_ds.path)} if self.val_ds else {})}
        resume_dir = self._resume_dir()
        if resume_dir and self._finished(resume_dir):
            return
        if resume_dir:
            self._check_resumable(resume_dir)
        changes = self._check_resume(resume_dir) if resume_dir else []
        self._write_run_info(resume_dir, changes)
        self.tracker = Tracker(cfg.trainer.logger, self.run_dir, cfg.trainer.project_name, cfg.trainer.experiment_name,
                               redact(asdict(cfg)))
        if resume_dir:  # the steps after the checkpoint are redone: their old rows go
            self.tracker.drop_after(self.ckpt.load_state(resume_dir)["step"])
        else:
            self.tracker.log({"data/train_rows": len(self.train_ds),
                              "data/train_filtered_long_prompts": self.train_ds.n_filtered,
                              "data/val_rows": len(self.val_ds) if self.val_ds else 0,
                              "data/val_filtered_long_prompts": self.val_ds.n_filtered if self.val_ds else 0}, 0)
        use_gpu = cfg.trainer.device == "cuda" or (cfg.trainer.device == "auto" and torch.cuda.is_available())
        threads = None if use_gpu else max(1, torch.get_num_threads() // cfg.trainer.n_workers)
        self.wg = make_worker_group(cfg.trainer.backend, _worker_cls(), cfg.trainer.n_workers, use_gpu,
                                    {"config": cfg, "resume_dir": str(resume_dir) if resume_dir else None,
                                     "num_threads": threads})
        if resume_dir:
            state = self.ckpt.load_state(resume_dir)
            self.wg.load_checkpoint(str(resume_dir))
            self.sampler.load_state_dict(state["sampler"])
            self.kl_ctrl.value = float(state["kl_coef"])
            self.global_step = int(state["step"])
            logger.info("resumed from %s (step %d)", resume_dir, self.global_step)
        self.normal_refs = self._normal_references(resume_dir) if d.normal_reference == "policy" else {}

    def _new_sampler(self) -> StatefulSampler:
        d = self.config.data
        labels = [r["label"] for r in self.train_ds.rows] if d.stratify_labels else None
        seed = self.config.trainer.seed if d.seed is None else d.seed
        return StatefulSampler(len(self.train_ds), d.rollout_batch_size, d.shuffle, seed, labels, d.sampler)

    def _normal_references(self, resume_dir: Path | None) -> dict[str, str | None]:
        """prompt -> the initial policy's greedy answer, for every ``<normal>`` row that the run's total_steps will
        sample (``data.normal_reference=policy``); None where that answer has no word (the row keeps its gold).
        Generated before step 1 into the run dir; a resumed run reads that file, since its policy is no longer the
        initial one."""
        path = self.run_dir / "normal_references.json"
        d, ahead, rows = self.config.data, self._new_sampler(), self.train_ds.rows  # seeded: the run's own batches
        need = {rows[i]["prompt"]: i for _ in range(self.config.trainer.total_steps) for i in ahead.next_indices()
                if rows[i]["label"] == "<normal>"}  # prompt -> a row index
        if resume_dir is not None:
            refs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            missing = sorted(p for p in need if p not in refs)
            if missing:
                raise UserError(f"{path} lacks the initial policy's answer to {len(missing)} <normal> prompts this run "
                                f"will sample (e.g. {missing[0][:80]!r}): data.normal_reference=policy writes them "
                                "before step 1, for the total_steps of that start; start it afresh "
                                "(trainer.resume=none)")
            return refs
        idx = [need[p] for p in sorted(need)]
        greedy = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": d.max_response_length,
                  "seed": self.config.trainer.seed}
        refs = {}
        for start in range(0, len(idx), d.val_batch_size):
            out = self._generate(self.train_ds, idx[start:start + d.val_batch_size], greedy)
            texts = decode_responses(self.tokenizer, out.batch["responses"], out.batch["response_mask"])
            refs.update((p, t if has_word(t) else None) for p, t in zip(out.non_tensor_batch["prompt"], texts))
        atomic_write_json(path, refs)
        logger.info("data.normal_reference=policy: the initial policy answered %d <normal> prompts (%d without a word "
                    "keep their gold): %s", len(refs), sum(v is None for v in refs.values()), path)
        return refs

    def _generate(self, ds: RLDataset, idx: list[int], meta: dict) -> DataProto:
        """Responses to rows ``idx`` of ``ds`` (padded to the worker count for dispatch, the padding dropped)."""
        prompts = ds.batch(idx, self.tokenizer.pad_token_id)
        padded, _ = pad_to_multiple(prompts, self.wg.world_size)
        padded.meta_info = meta
        out = self.wg.generate_sequences(padded)[: len(prompts)]
        return DataProto(batch=out.batch, non_tensor_batch=prompts.non_tensor_batch)

    def _with_normal_refs(self, batch: DataProto) -> None:
        """Score ``<normal>`` rows against the initial policy's answer (``data.normal_reference=policy``)."""
        nt = batch.non_tensor_batch
        sols = [["<normal>", self.normal_refs[p]] if lab == "<normal>" and self.normal_refs.get(p) else s
                for s, lab, p in zip(nt["solution"], nt["label"], nt["prompt"])]
        nt["solution"] = to_object_array(sols)

    # ------------------------------------------------------------------ setup helpers
    def _resume_dir(self) -> Path | None:
        mode = self.config.trainer.resume
        if mode == "none":
            return None
        if mode == "auto":
            return self.ckpt.latest()
        path = Path(mode)
        self.ckpt.load_state(path)  # raises unless complete
        return path

    def _finished(self, resume_dir: Path) -> bool:
        """Whether ``resume_dir`` is the last step of a finished run saved without the resume state and this run
        asks for no more steps than it took: then there is nothing to train (``fit`` returns at once, no worker
        starts). Asking for more is refused by ``_check_resumable``."""
        state = self.ckpt.load_state(resume_dir)
        if state.get("resume_state") is not False or self.config.trainer.total_steps > int(state["step"]):
            return False
        self.global_step = int(state["step"])
        logger.info("%s: the run finished at step %d (trainer.total_steps=%d): nothing to train", resume_dir,
                    self.global_step, self.config.trainer.total_steps)
        return True

    def _check_resumable(self, resume_dir: Path) -> None:
        """Stop before any worker starts when ``resume_dir`` holds no resume state (the final checkpoint of a
        finished run, unless it ran with trainer.keep_resume_state=true; an older, trimmed one)."""
        why = self.ckpt.not_resumable_reason(resume_dir)
        if why:
            raise UserError(f"cannot resume from {resume_dir}: {why}")

    def _check_resume(self, resume_dir: Path) -> list[str]:
        """Differences between the checkpoint's config/data and this run's; refused unless
        ``trainer.allow_config_change`` (without the check a changed lr or train file would go unnoticed)."""
        state = self.ckpt.load_state(resume_dir)
        saved = state.get("config")
        if saved is None and (self.run_dir / "config.yaml").is_file():  # checkpoints written before configs were
            saved = OmegaConf.to_container(OmegaConf.load(self.run_dir / "config.yaml"))
        if saved is None:
            logger.warning("%s records no config: cannot check that the resume uses the same settings", resume_dir)
            return []
        changes = config_changes(saved, redact(asdict(self.config)))
        for role, sha in state.get("data_sha256", {}).items():
            if self.data_sha256.get(role) != sha:
                changes.append(f"data {role} file content: sha256 {sha[:12]} -> {str(self.data_sha256.get(role))[:12]}")
        if changes and not self.config.trainer.allow_config_change:
            shown = "; ".join(changes[:8]) + (f"; ... ({len(changes)} in all)" if len(changes) > 8 else "")
            raise ConfigError(
                f"resume from {resume_dir}: the config differs from the checkpoint's ({shown}). Only the step budget, "
                "saving and logging may change. Restore the settings, start a fresh run (another trainer.save_dir or "
                "trainer.resume=none), or pass trainer.allow_config_change=true to resume anyway (recorded in "
                "run_info.json)")
        if changes:
            logger.warning("resuming with a changed config (trainer.allow_config_change=true): %s", "; ".join(changes))
        return changes

    def _write_run_info(self, resume_dir: Path | None, changes: list[str] | None = None) -> None:
        """config.yaml = this run's config; run_info.json: written by a fresh run, appended to (``resumes``) by a
        resumed one, so the original provenance is kept."""
        cfg = self.config
        cfg_yaml = OmegaConf.to_yaml(OmegaConf.create(redact(asdict(cfg))))
        atomic_write_text(self.run_dir / "config.yaml", cfg_yaml)
        files = {"train": str(self.train_ds.path), **({"val": str(self.val_ds.path)} if self.val_ds else {})}
        info = run_info(cfg.trainer.seed, files, resumed_from=str(resume_dir) if resume_dir else None)
        path = self.run_dir / "run_info.json"
        if resume_dir and path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                old = None
            if isinstance(old, dict):
                record = {k: info[k] for k in ("created", "git_commit", "argv", "data_sha256")}
                record.update({"from": str(resume_dir), "step": self.ckpt.load_state(resume_dir)["step"],
                               "config_changes": changes or [],
                               "allow_config_change": bool(cfg.trainer.allow_config_change)})
                old.setdefault("resumes", []).append(record)
                info = old
        atomic_write_json(path, info)

    # ------------------------------------------------------------------ phases
    def _gen_meta(self, validation: bool, step: int) -> dict:
        r, d = self.config.worker.rollout, self.config.data
        if validation:
            return {"do_sample": not r.val.greedy, "temperature": r.val.temperature, "top_p": r.val.top_p,
                    "max_new_tokens": r.val.max_new_tokens or d.max_response_length,
                    "seed": self.config.trainer.seed * 1_000_003 + 999_983}
        return {"do_sample": True, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
                "max_new_tokens": d.max_response_length, "seed": self.config.trainer.seed * 1_000_003 + step}

    def _score(self, batch: DataProto) -> tuple[np.ndarray, dict[str, list[float]], list[str]]:
        texts = decode_responses(self.tokenizer, batch.batch["responses"], batch.batch["response_mask"])
        nt = batch.non_tensor_batch
        scores, sub = score_batch(self.reward_fn, texts, list(nt["prompt"]), list(nt["solution"]), row_extras(batch))
        return np.asarray(scores, dtype=np.float64), sub, texts

    def _generations(self, batch: DataProto, texts: list[str], scores: np.ndarray) -> list[dict]:
        k = self.config.trainer.log_generations
        nt = batch.non_tensor_batch
        idx = np.linspace(0, len(texts) - 1, num=min(k, len(texts)), dtype=int) if k > 0 else []
        return [{"prompt": nt["prompt"][i], "label": nt["label"][i], "response": texts[i], "score": float(scores[i])}
                for i in idx]

    def train_step(self, step: int) -> dict[str, float]:
        """One step, phase by phase (see the module docstring); returns its metrics."""
        metrics: dict[str, float] = {}
        prompts, batch = self._rollout(step, metrics)
        with timed("reward", metrics):
            scores, sub, texts = self._reward(batch)
        self._log_probs_and_values(batch, metrics)
        with timed("adv", metrics):
            self._advantages(batch, metrics)
        self._update(batch, metrics)
        metrics.update(batch_metrics(batch, prompts.batch["attention_mask"], scores, sub, metrics,
                                     self.tokenizer.pad_token_id))
        metrics["trainer/low_signal_steps"] = float(self._note_signal(metrics["reward/signal_share"], step))
        metrics.update(ref_kl_metrics(batch, self.config.algorithm.kl_penalty))
        self.tracker.log_generations(self._generations(batch, texts, scores), step, "train")
        return metrics

    def _rollout(self, step: int, metrics: dict) -> tuple[DataProto, DataProto]:
        """The step's prompts (each row a group uid) and the batch of their n responses each."""
        prompts = self.train_ds.batch(self.sampler.next_indices(), self.tokenizer.pad_token_id)
        prompts.non_tensor_batch["uid"] = np.array([f"{step}-{i}" for i in range(len(prompts))], dtype=object)
        gen_in = prompts.repeat(self.config.worker.rollout.n, interleave=True)
        gen_in.meta_info = self._gen_meta(False, step)
        with timed("gen", metrics):
            out = self.wg.generate_sequences(gen_in)
        return prompts, DataProto(batch=out.batch, non_tensor_batch=gen_in.non_tensor_batch, meta_info={})

    def _reward(self, batch: DataProto) -> tuple[np.ndarray, dict[str, list[float]], list[str]]:
        """Score the responses; each score goes on its response's last token (``token_level_scores``)."""
        if self.normal_refs:
            self._with_normal_refs(batch)
        scores, sub, texts = self._score(batch)
        mask = batch.batch["response_mask"]
        last = (mask.sum(-1) - 1).clamp(min=0)
        token_scores = torch.zeros(mask.shape, dtype=torch.float32)
        token_scores[torch.arange(len(batch)), last] = torch.as_tensor(scores, dtype=torch.float32)
        batch.batch["token_level_scores"] = token_scores
        return scores, sub, texts

    def _kl_in_reward(self) -> bool:
        algo = self.config.algorithm
        return not algo.use_kl_loss and algo.kl_coef > 0

    def _n_mini_batches(self) -> int:
        return self.config.data.rollout_batch_size // self.config.worker.actor.global_batch_size

    def _log_probs_and_values(self, batch: DataProto, metrics: dict) -> None:
        """Old log-probs (only when the update needs them, see the module docstring), reference log-probs and the
        critic's values, each when the config uses it."""
        cfg = self.config
        if cfg.worker.actor.ppo_epochs > 1 or self._n_mini_batches() > 1 or self._kl_in_reward():
            with timed("old_log_prob", metrics):
                batch.union(self.wg.compute_log_probs(batch))
        if cfg.use_reference:
            with timed("ref", metrics):
                batch.union(self.wg.compute_ref_log_probs(batch))
        if cfg.use_critic:
            with timed("values", metrics):
                batch.union(self.wg.compute_values(batch))

    def _advantages(self, batch: DataProto, metrics: dict) -> None:
        """``token_level_rewards`` (the scores, less the KL penalty when it is in the reward), then the configured
        estimator's ``advantages`` and ``returns``."""
        algo, b = self.config.algorithm, batch.batch
        mask, rewards = b["response_mask"], b["token_level_scores"]
        if self._kl_in_reward():
            rewards, kl_m = core_algos.apply_kl_penalty(rewards, b["old_log_probs"], b["ref_log_probs"], mask,
                                                        self.kl_ctrl.value, algo.kl_penalty)
            self.kl_ctrl.update(kl_m["kl"], n_steps=len(batch))
            metrics.update({f"critic/{k}": v for k, v in kl_m.items()})
        b["token_level_rewards"] = rewards
        b["advantages"], b["returns"] = core_algos.compute_advantage(
            algo.adv_estimator, rewards, mask, index=batch.non_tensor_batch["uid"], values=b.get("values"),
            gamma=algo.gamma, lam=algo.lam)

    def _update(self, batch: DataProto, metrics: dict) -> None:
        """Critic then actor updates, on the rows in the release's balanced order when trainer.balance_batch."""
        cfg, n_mini = self.config, self._n_mini_batches()
        upd = balance_batch(batch, cfg.trainer.balance_batch_partitions or self.wg.world_size) \
            if cfg.trainer.balance_batch else batch
        if cfg.use_critic:
            with timed("update_critic", metrics):
                metrics.update(_mean_dicts(self.wg.update_critic(upd, n_mini)))
        with timed("update_actor", metrics):
            metrics.update(_mean_dicts(self.wg.update_actor(upd, n_mini)))

    def _note_signal(self, share: float, step: int) -> int:
        """Consecutive steps (this process; a resume restarts the count) with share <= trainer.signal_warn_share."""
        t = self.config.trainer
        low = t.signal_warn_share >= 0 and share <= t.signal_warn_share
        self._low_signal_run = getattr(self, "_low_signal_run", 0) + 1 if low else 0
        if low:
            logger.warning(
                "step %d: only %.0f%% of prompt groups have rewards that differ (trainer.signal_warn_share=%g) for %d "
                "step(s): little or no learning signal. Raise worker.rollout.temperature or n, or start from a less "
                "(or more) steered model%s", step, 100 * share, t.signal_warn_share, self._low_signal_run,
                f"; stopping after {t.signal_stop_steps}" if t.signal_stop_steps > 0 else "")
        return self._low_signal_run

    def validate(self, step: int) -> dict[str, float]:
        """Generate on the validation rows (greedy by default); reward and ROUGE-L recall split forget/neighbor."""
        bs = self.config.data.val_batch_size
        all_scores, all_rouge, all_refusal, all_labels, gens = [], [], [], [], []
        chunks = range(0, len(self.val_ds), bs)
        for start in progress(iterable=chunks, desc="validation", disable=not self.config.trainer.progress_bar,
                              leave=False):
            idx = list(range(start, min(start + bs, len(self.val_ds))))
            batch = self._generate(self.val_ds, idx, self._gen_meta(True, step))
            scores, sub, texts = self._score(batch)
            sols = batch.non_tensor_batch["solution"]
            rouge = [rougel_recall(t, str(s[1]) if isinstance(s, (list, tuple)) and len(s) > 1 else str(s))
                     for t, s in zip(texts, sols)]
            all_scores.append(scores)
            all_rouge.append(np.asarray(rouge))
            all_refusal.append(np.asarray(sub.get("refusal", [np.nan] * len(texts)), dtype=np.float64))
            all_labels.append(batch.non_tensor_batch["label"])
            if not gens:
                gens = self._generations(batch, texts, scores)
        scores, rouge = np.concatenate(all_scores), np.concatenate(all_rouge)
        refusal, labels = np.concatenate(all_refusal), np.concatenate(all_labels)
        metrics = {"val/reward": float(scores.mean())}
        for lab, name in (("<reject>", "forget"), ("<normal>", "neighbor")):
            for key, arr in (("reward", scores), ("rougeL", rouge), ("refusal_rate", refusal)):
                v = label_mean(arr, labels, lab)
                if v is not None:
                    metrics[f"val/{name}_{key}"] = v
        self.tracker.log_generations(gens, step, "val")
        return metrics

    def save_checkpoint(self) -> Path:
        """A complete checkpoint of this step. The run's last step (trainer.total_steps) is saved without the resume
        state unless trainer.keep_resume_state: the evaluation needs the weights only, and a finished run is resumed
        only to extend it."""
        t = self.config.trainer
        resume_state = self.global_step < t.total_steps or t.keep_resume_state
        tmp = self.ckpt.begin(self.global_step)
        self.wg.save_checkpoint(str(tmp), resume_state)
        state = {"step": self.global_step, "sampler": self.sampler.state_dict(), "kl_coef": self.kl_ctrl.value,
                 "config": redact(asdict(self.config)), "data_sha256": self.data_sha256,  # checked on resume
                 "resume_state": resume_state}
        return self.ckpt.commit(tmp, self.global_step, state)

    # ------------------------------------------------------------------ loop
    def fit(self) -> list[dict[str, float]]:
        """Run until ``trainer.total_steps``; returns the per-step metrics (also logged)."""
        t = self.config.trainer
        history = []
        if t.val_before_train and self.val_ds is not None and self.global_step == 0:
            m: dict[str, float] = {}
            with timed("validation", m):
                m.update(self.validate(0))
            self.tracker.log(m, 0)
        bar = progress(t.total_steps, "steps", initial=self.global_step, disable=not t.progress_bar)
        try:
            while self.global_step < t.total_steps:
                self.global_step += 1
                step = self.global_step
                last = step == t.total_steps
                metrics: dict[str, float] = {}
                with timed("step", metrics):
                    try:
                        metrics.update(self.train_step(step))
                    except Exception as exc:  # NaN/inf raised inside a worker (possibly wrapped by Ray)
                        if "NonFiniteLossError" in type(exc).__name__ or "NonFiniteLossError" in str(exc):
                            raise TrainingDivergedError(
                                f"step {step}: non-finite loss/gradient ({exc}). Nothing was saved for this step; the "
                                f"last good checkpoint is {self.ckpt.latest()}. Lower the learning rate or check the "
                                "data."
                            ) from exc
                        raise
                    stop = 0 < t.signal_stop_steps <= metrics.get("trainer/low_signal_steps", 0)
                    if stop and not last:
                        logger.warning("step %d: stopping early, no learning signal for %d steps "
                                       "(trainer.signal_stop_steps)", step, t.signal_stop_steps)
                        metrics["trainer/stopped_no_signal"] = 1.0
                        last = True  # validate and save as at the end
                    due = (t.val_freq > 0 and step % t.val_freq == 0) or (last and t.val_at_end)
                    if self.val_ds is not None and due:
                        with timed("validation", metrics):
                            metrics.update(self.validate(step))
                    if (t.save_freq > 0 and step % t.save_freq == 0) or last:
                        with timed("save", metrics):
                            self.save_checkpoint()
                metrics["step"] = step
                self.tracker.log(metrics, step)
                history.append(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics.get('reward/mean', float('nan')):.3f}")
                if metrics.get("trainer/stopped_no_signal"):
                    break
        finally:
            bar.close()
        return history

    def close(self) -> None:
        """Finish the logs, close the workers (their vLLM engines stop), drop a checkpoint this process left half
        written, release the run dir's lock; after a normal end, an error or a SIGTERM alike."""
        try:
            self._close()
        finally:
            try:
                if getattr(self, "ckpt", None) is not None:
                    self.ckpt.discard_partial()
            finally:
                self.lock.release()

    def _close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
        if self.wg is not None:
            self.wg.shutdown()
        if "jsonl" in self.config.trainer.logger:
            try:  # a plotting problem must never hide the run's own outcome
                out = write_curves(self.run_dir)
                if out:
                    logger.info("training curves: %s, %s", *out)
            except Exception as exc:  # noqa: BLE001
                logger.warning("could not draw the training curves: %s", exc)


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = dicts[0].keys()
    return {k: float(np.mean([d[k] for d in dicts])) for k in keys}


def _worker_cls():
    from verl.workers.fsdp_workers import FSDPWorker  # start-up cost: transformers (~3 s), only when workers start

    return FSDPWorker
