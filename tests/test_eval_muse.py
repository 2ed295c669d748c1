"""MUSE-Books VerbMem prompt forms (verl/eval/muse.py): MUSE's raw prompt, or the RULE release's evaluator's."""

import pytest

from verl.eval import muse


def test_verbmem_request_forms():
    assert muse.verbmem_request("Harry looked at the", "muse") == ("Harry looked at the", ())
    assert muse.verbmem_request("Harry looked at the", "release") == ("Completion: Harry looked at the\nAnswer: ",
                                                                      ("\n",))
    with pytest.raises(ValueError, match="verbmem_prompt"):
        muse.verbmem_request("x", "chat")


@pytest.mark.parametrize("form, prompt, stops", [
    ("muse", "Harry looked at the", ()),
    ("release", "Completion: Harry looked at the\nAnswer: ", ("\n",)),  # the release's verl/eval/eval_muse/verbmem.py
])
def test_verbmem_generates_from_the_chosen_form(monkeypatch, form, prompt, stops):
    seen = {}

    def fake_generate(model, tok, prompts, max_new_tokens, stop_strings, **kw):
        seen.update(prompts=prompts, stops=stop_strings, n=max_new_tokens)
        return ["owl"]

    class Tok:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    monkeypatch.setattr(muse, "generate", fake_generate)
    score, items = muse.evaluate_verbmem(None, Tok(), [{"prompt": "Harry looked at the", "gt": "owl"}],
                                         prompt_form=form)
    assert seen == {"prompts": [prompt], "stops": stops, "n": 128} and score == 1.0
