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


def test_simnpo_margin_sign_as_published():
    # eq. 4 of the SimNPO paper: a larger gamma lowers the sigmoid's argument, so the loss rises
    logp, n = torch.tensor([-6.0]), torch.tensor([3.0])
    lo, hi = losses.simnpo_loss(logp, n, 2.0, 0.0), losses.simnpo_loss(logp, n, 2.0, 1.0)
    assert lo.item() == pytest.approx(math.log(1 + math.exp(-4.0)), abs=1e-6)  # -1 * logsigmoid(4)
    assert hi.item() == pytest.approx(math.log(1 + math.exp(-3.0)), abs=1e-6) and hi > lo
