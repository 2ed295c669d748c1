"""RS.losses on tiny tensors against hand-computed values, and the stage loss combinations (GDR, KLR)."""

import math
from types import SimpleNamespace

import pytest
import torch

from RS import losses
from RS.args import TrainArgs
from RS.stages import STAGES

L3 = math.log(3.0)


def _batch():
    # B=1, T=3, V=2. Position 0 predicts label[1]=0 with p=(0.75, 0.25); position 1 predicts label[2]=1 with
    # p=(0.5, 0.5); position 2's logits are unused (no next label). label[0] is the (masked) prompt token.
    logits = torch.tensor([[[L3, 0.0], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    return logits, labels


def test_sequence_logprob_and_nll():
    logits, labels = _batch()
    logp, n = losses.sequence_logprob(logits, labels)
    assert n.tolist() == [2.0]
    assert logp.item() == pytest.approx(math.log(0.75) + math.log(0.5), abs=1e-6)
    assert losses.nll_loss(logits, labels).item() == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2, abs=1e-6)


def test_masked_tokens_do_not_count():
    logits, labels = _batch()
    masked = labels.clone()
    masked[0, 1] = -100  # only the p=0.5 token remains
    assert losses.nll_loss(logits, masked).item() == pytest.approx(math.log(2), abs=1e-6)


def test_ga_is_minus_nll():
    logits, labels = _batch()
    assert losses.ga_loss(logits, labels).item() == pytest.approx(-losses.nll_loss(logits, labels).item())


def test_kl_hand_value():
    logits, labels = _batch()
    ref = torch.zeros_like(logits)  # uniform reference
    # position 0: KL(u || (0.75,0.25)) = 0.5*log(0.5/0.75) + 0.5*log(0.5/0.25) = 0.5*log(4/3); position 1: 0
    expected = (0.5 * math.log(4 / 3) + 0.0) / 2
    assert losses.kl_loss(logits, ref, labels).item() == pytest.approx(expected, abs=1e-6)
    assert losses.kl_loss(logits, logits.clone(), labels).item() == pytest.approx(0.0, abs=1e-7)


def test_npo_hand_value_and_ga_gradient_at_init():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    # -2/0.5 * logsigmoid(-0.5 * 1) = 4 * log(1 + e^0.5)
    assert losses.npo_loss(logp, ref, 0.5).item() == pytest.approx(4 * math.log(1 + math.exp(0.5)), abs=1e-6)
    x = torch.tensor([-3.0], requires_grad=True)
    loss = losses.npo_loss(x, torch.tensor([-3.0]), 0.2)
    assert loss.item() == pytest.approx(2 / 0.2 * math.log(2), abs=1e-5)
    loss.backward()
    assert x.grad.item() == pytest.approx(1.0, abs=1e-6)  # same direction and size as GA on the summed log-prob


def test_npo_batch_mean():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    expected = (4 * math.log(1 + math.exp(0.5)) + 4 * math.log(2)) / 2
    assert losses.npo_loss(logp, ref, 0.5).item() == pytest.approx(expected, abs=1e-6)


def test_simnpo_hand_value():
    # -2/2 * logsigmoid(-2 * (-6/3) - 0.5) = log(1 + e^-3.5)
    val = losses.simnpo_loss(torch.tensor([-6.0]), torch.tensor([3.0]), beta=2.0, gamma=0.5)
    assert val.item() == pytest.approx(math.log(1 + math.exp(-3.5)), abs=1e-6)


def test_dpo_hand_value():
    # margin = (-1 - -2) - (-3 - -2) = 2; -logsigmoid(0.5 * 2) = log(1 + e^-1)
    val = losses.dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert val.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)


class _FixedLM(torch.nn.Module):
    """Returns given logits whatever the input (for checking how stages combine losses)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits)


def test_stage_combinations_gdr_klr():
    from RS.train import compute_loss

    logits, labels = _batch()
    batch = {"input_ids": torch.zeros_like(labels), "attention_mask": torch.ones_like(labels), "labels": labels}
    model, ref = _FixedLM(logits), _FixedLM(torch.zeros_like(logits))
    args = TrainArgs(target="x", output_dir="x", retain_weight=0.5)
    ga = -(-(math.log(0.75) + math.log(0.5)) / 2)
    gdr = compute_loss(STAGES["ga_gdr"], args, model, ref, batch, batch)
    assert gdr["loss"].item() == pytest.approx(ga + 0.5 * (-ga), abs=1e-6)
    klr = compute_loss(STAGES["ga_klr"], args, model, ref, batch, batch)
    assert klr["loss"].item() == pytest.approx(ga + 0.5 * (0.5 * math.log(4 / 3) / 2), abs=1e-6)
    npo = compute_loss(STAGES["npo"], TrainArgs(target="x", output_dir="x", npo_beta=0.5), model, ref, batch, None)
    seq, seq_ref = math.log(0.75) + math.log(0.5), 2 * math.log(0.5)
    want = -2 / 0.5 * math.log(1 / (1 + math.exp(0.5 * (seq - seq_ref))))
    assert npo["loss"].item() == pytest.approx(want, abs=1e-5)
    assert STAGES["npo_klr"].needs_ref and not STAGES["simnpo_gdr"].needs_ref and not STAGES["ga_gdr"].needs_ref


@pytest.fixture
def registered():
    """Loss registry entries a test adds, removed afterwards (the registries are module-level)."""
    added = []
    yield added
    for registry, name in added:
        registry.pop(name, None)


def test_losses_registered_in_a_test_make_a_stage(registered):
    """A loss registered by name is usable by a stage with no other change: the step runs the forward passes its
    entry asks for (token or sequence level, the reference)."""
    from RS.stages import Stage
    from RS.train import compute_loss

    @losses.register_forget_loss("seq_margin", level="sequence", needs_ref=True)
    def seq_margin(cur, ref, args):
        return (ref.logp - cur.logp).mean()

    @losses.register_retain_loss("token_count", every_position=lambda args: True)
    def token_count(cur, ref, args):
        return (cur.labels != losses.IGNORE_INDEX).sum().float()

    registered += [(losses.FORGET_LOSSES, "seq_margin"), (losses.RETAIN_LOSSES, "token_count")]
    stage = Stage("margin_count", "passage", "seq_margin", "token_count")
    assert stage.needs_ref and (stage.policy_passes, stage.ref_passes) == (2, 1)
    logits, labels = _batch()
    batch = {"input_ids": torch.zeros_like(labels), "attention_mask": torch.ones_like(labels), "labels": labels}
    model, ref = _FixedLM(logits), _FixedLM(torch.zeros_like(logits))
    parts = compute_loss(stage, TrainArgs(target="x", output_dir="x", retain_weight=0.5), model, ref, batch, batch)
    seq, seq_ref = math.log(0.75) + math.log(0.5), 2 * math.log(0.5)
    assert parts["forget"].item() == pytest.approx(seq_ref - seq, abs=1e-6) and parts["retain"].item() == 2.0
    assert parts["loss"].item() == pytest.approx(seq_ref - seq + 1.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown forget loss 'seq_margn'; choose one of"):
        Stage("typo", "passage", "seq_margn")
    with pytest.raises(ValueError, match="already registered"):
        losses.register_retain_loss("kl")(token_count)


def test_simnpo_margin_sign_as_published():
    # eq. 4 of the SimNPO paper: a larger gamma lowers the sigmoid's argument, so the loss rises
    logp, n = torch.tensor([-6.0]), torch.tensor([3.0])
    lo, hi = losses.simnpo_loss(logp, n, 2.0, 0.0), losses.simnpo_loss(logp, n, 2.0, 1.0)
    assert lo.item() == pytest.approx(math.log(1 + math.exp(-4.0)), abs=1e-6)  # -1 * logsigmoid(4)
    assert hi.item() == pytest.approx(math.log(1 + math.exp(-3.0)), abs=1e-6) and hi > lo


# ------------------------------------------------------------------------- the release's reductions (paper setting)
def test_kl_release_reduction_hand_value_counts_every_position():
    """--klr_reduction release: KL(ref || model) summed over the vocabulary, over all B*T positions (the last one
    and padding included) / (B*T), the release's kl_div(..., reduction="batchmean", log_target=True) on view(-1, V)."""
    import torch.nn.functional as F

    logits, labels = _batch()
    ref = torch.zeros_like(logits)  # uniform reference
    # position 0: 0.5*log(4/3); position 1: 0; position 2 (predicts nothing, still counted): KL(u || softmax(5, -5))
    last = 5 - math.log(2) + math.log(1 + math.exp(-10))
    assert losses.kl_loss(logits, ref, labels, "release").item() == pytest.approx(
        (0.5 * math.log(4 / 3) + last) / 3, abs=1e-6)
    # a second row of padding only: its positions count in B*T as in the release (KL 0 here: both uniform)
    padded_logits = torch.cat([logits, torch.zeros_like(logits)])
    padded_labels = torch.cat([labels, torch.full_like(labels, -100)])
    val = losses.kl_loss(padded_logits, torch.zeros_like(padded_logits), padded_labels, "release")
    assert val.item() == pytest.approx((0.5 * math.log(4 / 3) + last) / 6, abs=1e-6)
    torch.manual_seed(0)
    cur, tgt = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    release = F.kl_div(F.log_softmax(cur, -1).view(-1, 7), F.log_softmax(tgt, -1).view(-1, 7), reduction="batchmean",
                       log_target=True)  # verbatim from RS/src/llmtuner/train/npo/trainer.py (current, ref)
    assert losses.kl_loss(cur, tgt, torch.zeros(2, 5, dtype=torch.long), "release").item() == pytest.approx(
        release.item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        losses.kl_loss(logits, ref, labels, "batchmean")


def test_nll_sum_and_labelled_tokens():
    logits, labels = _batch()
    assert losses.labelled_tokens(labels) == 2
    assert losses.nll_loss(logits, labels, "sum").item() == pytest.approx(-(math.log(0.75) + math.log(0.5)), abs=1e-6)
    assert losses.ga_loss(logits, labels, "sum").item() == pytest.approx(math.log(0.75) + math.log(0.5), abs=1e-6)


class _LearnedLM(torch.nn.Module):
    """Logits are a parameter: the gradient of a loss is readable per logit."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits)


def _accumulate(reduction: str, micro: list) -> tuple[list[torch.Tensor], dict]:
    """One optimizer step of RS.train's accumulation on one process (accelerate divides each micro-step's loss by
    the accumulation steps): the gradients before clipping and the logged values."""
    from RS.train import _StepLoss

    args = TrainArgs(target="x", output_dir="x", loss_reduction=reduction)
    acc = SimpleNamespace(device=torch.device("cpu"), num_processes=1, gradient_accumulation_steps=len(micro),
                          reduce=lambda t, reduction: t)
    models = [_LearnedLM(lg) for lg, _ in micro]
    opt = torch.optim.SGD([m.logits for m in models], lr=0.0)
    tally = _StepLoss(reduction == "global_token_mean")
    for model, (_, lab) in zip(models, micro):
        batch = {"input_ids": torch.zeros_like(lab), "attention_mask": torch.ones_like(lab), "labels": lab}
        parts = _rt_loss(args, model, batch)
        (parts["loss"] / acc.gradient_accumulation_steps).backward()
        tally.add(parts, lab)
    logged = tally.finish(acc, opt)
    return [m.logits.grad for m in models], logged


def _rt_loss(args, model, batch):
    from RS.train import compute_loss

    return compute_loss(STAGES["rt"], args, model, None, batch, None)


def test_global_token_mean_over_two_micro_batches_of_different_token_counts():
    """--loss_reduction global_token_mean: the step's loss and gradient are those of (sum of token NLLs) / (labelled
    tokens of the whole step), not the mean of the micro-batches' own token means."""
    logits, labels = _batch()  # micro-batch 1: two tokens, -log 0.75 and -log 0.5
    lg2, lab2 = torch.zeros_like(logits), torch.tensor([[-100, -100, 1]])  # micro-batch 2: one token, -log 0.5
    micro = [(logits, labels), (lg2, lab2)]
    grads, logged = _accumulate("global_token_mean", micro)
    want = -(math.log(0.75) + 2 * math.log(0.5)) / 3
    assert logged["loss"] == [pytest.approx(want, abs=1e-6)] and logged["forget"] == [pytest.approx(want, abs=1e-6)]
    ref = [lg.clone().requires_grad_(True) for lg, _ in micro]  # the hand-written global mean, differentiated
    total = sum(losses.nll_loss(r, lab, "sum") for r, (_, lab) in zip(ref, micro)) / 3
    total.backward()
    for got, r in zip(grads, ref):
        torch.testing.assert_close(got, r.grad)
    # the default reduction: the mean of the micro-batch means, a different number on the same data
    grads_m, logged_m = _accumulate("micro_batch_mean", micro)
    micro_mean = (-(math.log(0.75) + math.log(0.5)) / 2 - math.log(0.5)) / 2
    assert sum(logged_m["loss"]) / 2 == pytest.approx(micro_mean, abs=1e-6) and abs(micro_mean - want) > 0.03
    assert not torch.allclose(grads_m[1], grads[1])
