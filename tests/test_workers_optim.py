"""The update loop the actor and critic share: optimizer steps per mini-batch, gradient accumulation over
micro-batches, averaged metrics, and the NaN stop."""

import types

import pytest
import torch

from verl.protocol import DataProto
from verl.workers import fsdp_utils
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


def _offload_run(offload: bool, monkeypatch) -> tuple[float, list[str], torch.optim.Optimizer]:
    w, opt, sched, data = _setup()
    moves, real = [], fsdp_utils.move_optimizer_state
    monkeypatch.setattr(fsdp_utils, "move_optimizer_state", lambda o, d: (moves.append(d.type), real(o, d)))
    _run(w, opt, sched, data, lambda mb: ((w(mb.batch["x"]) - 1).pow(2).sum(), {}), offload_optimizer=offload)
    monkeypatch.setattr(fsdp_utils, "move_optimizer_state", real)
    return w.weight.item(), moves, opt


def test_offloaded_optimizer_steps_as_the_plain_one_and_rests_on_cpu(monkeypatch):
    """``offload_optimizer``: the state joins the parameters for the step and goes back to the CPU; the trajectory is
    the plain one (on a CPU both moves stay on the CPU: the GPU round trip runs only on CUDA)."""
    w0, moves0, _ = _offload_run(False, monkeypatch)
    w1, moves1, opt1 = _offload_run(True, monkeypatch)
    assert w1 == w0 and moves0 == [] and moves1 == ["cpu", "cpu"] * 2  # to the parameters' device, back: per step
    assert all(v.device.type == "cpu" for s in opt1.state.values() for v in s.values())


def test_move_optimizer_state_round_trip_keeps_values_and_step_counters():
    w, opt, sched, data = _setup()
    _run(w, opt, sched, data, lambda mb: (w(mb.batch["x"]).sum(), {}))
    before = {k: v.clone() for k, v in opt.state[w.weight].items()}
    fsdp_utils.move_optimizer_state(opt, torch.device("meta"))  # a device other than the CPU, no accelerator needed
    state = opt.state[w.weight]
    assert state["exp_avg"].device.type == "meta" and state["step"].device.type == "cpu"  # AdamW keeps steps on CPU
    state["exp_avg"], state["exp_avg_sq"] = before["exp_avg"].clone(), before["exp_avg_sq"].clone()  # meta has no data
    fsdp_utils.move_optimizer_state(opt, torch.device("cpu"))
    assert all(torch.equal(opt.state[w.weight][k], v) for k, v in before.items())
    assert fsdp_utils.optimizer_step_device(opt, torch.device("meta")) == w.weight.device


NAN_WORKER = '''
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from verl.protocol import DataProto
from verl.workers.optim import NonFiniteLossError, build_optimizer, minibatch_update
import types
rank = int(sys.argv[1])
os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
from datetime import timedelta
dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=20))
torch.manual_seed(0)
model = FSDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)), device_id=torch.device("cpu"),
             use_orig_params=True)
opt, sched = build_optimizer(model, types.SimpleNamespace(lr=0.1, weight_decay=0.0, betas=(0.9, 0.999),
                                                          lr_warmup_steps=0))
data = DataProto.from_dict({"x": torch.ones(4, 4)})
def loss_fn(mb):
    loss = model(mb.batch["x"]).sum()
    return (loss * float("nan") if rank == 1 else loss), {}
try:
    minibatch_update(model, opt, sched, data, loss_fn, n_mini_batches=1, micro_batch_size=2, epochs=1,
                     max_grad_norm=1.0, offload_optimizer=False, device=torch.device("cpu"), prefix="actor")
    print("NO_RAISE")
except NonFiniteLossError as exc:
    print("RAISED", exc, flush=True)
dist.barrier()  # both ranks stay alive, as worker processes do after a failed call
dist.destroy_process_group()
'''


def test_nan_on_one_rank_stops_every_rank_without_a_hang(tmp_path):
    """Two gloo ranks under FSDP; only rank 1's loss is NaN. Both raise NonFiniteLossError (rank 0 says the NaN was
    elsewhere) instead of rank 0 waiting in the gradient reduce-scatter that rank 1 never joins."""
    import subprocess
    import sys

    from verl.utils.net import free_port

    script = tmp_path / "nan_worker.py"
    script.write_text(NAN_WORKER)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=90)
            outs.append(out + err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert "RAISED actor loss is nan" in outs[1], outs[1][-2000:]
    assert "RAISED actor loss is non-finite on another rank" in outs[0], outs[0][-2000:]
