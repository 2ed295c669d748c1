"""HF ``generate`` on the actor's FSDP module under bf16 mixed precision (fp32 master weights), on CPU/gloo."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from verl.config import RolloutConfig
from verl.protocol import DataProto
from verl.workers import fsdp_utils
from verl.workers.rollout import HFRollout


@pytest.fixture()
def one_rank():
    """A world-1 gloo group for FSDP, torn down after the test when this test made it."""
    made = not dist.is_initialized()
    fsdp_utils.init_distributed(torch.device("cpu"), "gloo")
    yield
    if made and dist.is_initialized():
        dist.destroy_process_group()


def _prompts(n: int, width: int, pad: int) -> DataProto:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 2000, (n, width), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = pad, 0  # one left-padded row
    batch = DataProto.from_dict(tensors={"input_ids": ids, "attention_mask": mask})
    batch.meta_info = {"max_new_tokens": 6, "do_sample": False}
    return batch


def test_bf16_fsdp_rollout_generates_as_the_training_forward(tiny_model_path, one_rank):
    """The root unit's embedding and head are fp32 master weights while the layers compute in bf16: generate must
    run inside the root FSDP forward (a plain ``generate`` fails with ``expected m1 and m2 to have the same
    dtype``), and its greedy tokens are the argmax of the training forward's bf16 logits."""
    from verl.models.embedded import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    model = fsdp_utils.load_module(tiny_model_path, "actor", torch.float32)
    module = fsdp_utils.wrap_fsdp(model, torch.device("cpu"), torch.bfloat16, 1)
    batch = _prompts(3, 7, tok.pad_token_id)
    out = HFRollout(module, tok, RolloutConfig(micro_batch_size=2), torch.device("cpu"), 1).generate(batch)
    resp, rmask = out.batch["responses"], out.batch["response_mask"]
    assert resp.shape == (3, 6) and rmask[:, 0].all()
    with torch.no_grad():
        logits = module(input_ids=out.batch["input_ids"], attention_mask=out.batch["attention_mask"]).logits
    assert logits.dtype == torch.bfloat16  # the training forward's compute dtype
    greedy = logits[:, 7 - 1: -1].argmax(-1)
    assert torch.equal(greedy[rmask.bool()], resp[rmask.bool()])
    assert all(p.dtype == torch.float32 for p in module.parameters())  # master weights untouched
    assert "forward" not in module.module.__dict__  # the model's own forward is back


def test_generate_without_fsdp_is_plain_generate():
    seen = {}

    class Fake(torch.nn.Module):
        def generate(self, **kw):
            seen.update(kw)
            return "out"

    assert fsdp_utils.generate(Fake(), input_ids=1, max_new_tokens=2) == "out" and seen == {"input_ids": 1,
                                                                                           "max_new_tokens": 2}
