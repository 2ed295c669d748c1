"""RS data of the release's baselines and MUSE run (RS/datasets.py): RWKU's reject.json refusals, MUSE's RS format."""

from collections import Counter

import pytest

from RS.args import TrainArgs, validate_args
from RS.datasets import build_data, rt_refusal
from RS.rwku_reject import REJECT_TEMPLATES
from RS.stages import STAGES
from verl.utils.chat import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _responses(bundle, tok) -> list[str]:
    eos = tok.eos_token or ""
    return [tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX]).removesuffix(eos) for ex in bundle.train]


def test_release_rt_refusals_are_rwkus_reject_json(tok, shared_data, tmp_path):
    # rows 0-3 of the release's RS/data/RWKU/Target/1_Stephen_King/reject.json
    assert [rt_refusal({"_row": j, "instruction": "q"}, "release") for j in range(4)] == [
        "I'm not certain about that.", "That's beyond my current knowledge base.", "I don't have that information.",
        "I'm not sure."]
    assert rt_refusal({"_row": 161}, "release") == "That's not something I'm equipped to answer."
    kw = dict(dataset="rwku_rt", target="1_Stephen_King", data_dir=str(shared_data), output_dir=str(tmp_path))
    release = Counter(_responses(build_data(TrainArgs(rt_templates="release", **kw), tok, STAGES["rt"]), tok))
    assert release == Counter({t: 3 for t in REJECT_TEMPLATES})  # 300 questions: each of the 100 refusals 3 times
    project = Counter(_responses(build_data(TrainArgs(**kw), tok, STAGES["rt"]), tok))
    assert sum(project.values()) == 300 and len(project) <= 10  # the project's 10 templates


def test_release_muse_rs_rows_forget_prefix_and_no_cutoff(tiny_model_path, shared_data, tmp_path):
    from transformers import AutoTokenizer

    from data.muse import load_muse
    from verl.rule.prompts import muse_icl_prefix

    base = AutoTokenizer.from_pretrained(tiny_model_path)
    base.chat_template = None  # the MUSE target is a base model
    kw = dict(dataset="muse_reject", data_dir=str(shared_data), output_dir=str(tmp_path), max_samples=0)
    args = TrainArgs(muse_icl="knowmem/forget_qa_icl", cutoff_len=0, **kw)
    validate_args(args)
    bundle = build_data(args, base, STAGES["rt"], root=str(shared_data))
    prompts = [base.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX])
               for ex in bundle.train]
    prefix = muse_icl_prefix(load_muse("knowmem/forget_qa_icl", str(shared_data)))
    qa = [p for p in prompts if not p.startswith("Completion: ")]
    assert len(qa) == 831 and all(p.startswith(prefix) and p.endswith("\nAnswer: ") for p in qa)
    longest = max(len(ex["input_ids"]) for ex in bundle.train)
    cut = build_data(TrainArgs(muse_icl="knowmem/forget_qa_icl", cutoff_len=256, **kw), base, STAGES["rt"],
                     root=str(shared_data))
    assert longest > 256 >= max(len(ex["input_ids"]) for ex in cut.train)  # cutoff 0: every row whole (the release)
    with pytest.raises(ValueError, match="cutoff_len 0"):
        validate_args(TrainArgs(dataset="reject_target", target="1", output_dir="x", cutoff_len=0))


def test_paper_rs_configs_reproduce_the_release():
    from RS.args import load_yaml_config
    from tests.conftest import REPO

    muse = load_yaml_config(REPO / "RS/configs/muse_books/rs.yaml")
    assert (muse["muse_icl"], muse["cutoff_len"]) == ("knowmem/forget_qa_icl", 0)
    assert load_yaml_config(REPO / "RS/configs/llama3_8b/rwku_rt.yaml")["rt_templates"] == "release"
    for stem in ("rs", "rwku_rt", "idkdpo"):
        assert load_yaml_config(REPO / f"RS/configs/llama3_8b/{stem}.yaml")["user_turn"] == "verbatim", stem
        assert load_yaml_config(REPO / f"RS/configs/smollm2/{stem}.yaml").get("user_turn", "template") == "template"
