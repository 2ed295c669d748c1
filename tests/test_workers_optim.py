"""The update loop the actor and critic share: optimizer steps per mini-batch, gradient accumulation over
micro-batches, averaged metrics, and the NaN stop."""

import types

import pytest
import torch

from verl.protocol import DataProto
from verl.workers.optim import NonFiniteLossError, build_optimizer, minibatch_update

OPTIM = types.SimpleNamespace(lr=0.1, weight_decay=0.0, betas=(0.9, 0.999), lr_warmup_steps=0)


def _setup():
    w = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(w.weight)
    opt, sched = build_optimizer(w, OPTIM)
    data = DataProto.from_dict({"x": torch.tensor([[1.0], [2.0], [3.0], [4.0]])})
    return w, opt, sched, data


def _run(w, opt, sched, data, loss_fn, **kw):
    args = dict(n_mini_batches=2, micro_batch_size=1, epochs=1, max_grad_norm=100.0, offload_optimizer=False,
                device=torch.device("cpu"), prefix="p")
    return minibatch_update(w, opt, sched, data, loss_fn, **{**args, **kw})


def test_steps_per_mini_batch_and_accumulated_gradient():
    w, opt, sched, data = _setup()
    grads = []
    opt.register_step_pre_hook(lambda *_: grads.append(w.weight.grad.item()))

    def loss_fn(mb):
        loss = -(w(mb.batch["x"])).sum()  # d loss / d w = -x
        return loss, {"p/x": float(mb.batch["x"].sum())}

    out = _run(w, opt, sched, data, loss_fn)
    # two mini-batches of two micro-batches: each step sees the micro-batch mean of the gradients
    assert grads == pytest.approx([-(1 + 2) / 2, -(3 + 4) / 2])
    assert out["p/x"] == pytest.approx(2.5)  # mean over the 4 micro-batches
    assert out["p/grad_norm"] == pytest.approx((1.5 + 3.5) / 2) and out["p/lr"] == pytest.approx(0.1)
    assert "p/loss" in out and w.weight.item() > 0  # moved against the gradient


def test_non_finite_loss_stops_before_any_step():
    w, opt, sched, data = _setup()

    def loss_fn(mb):
        return w(mb.batch["x"]).sum() * float("nan"), {"p/pg": 1.0}

    with pytest.raises(NonFiniteLossError, match="p loss is nan"):
        _run(w, opt, sched, data, loss_fn)
    assert w.weight.item() == 0.0 and w.weight.grad is None
