"""The answer's text is computed once, by the request's detokenizer: the final output's text
is the streamed deltas joined, and it is what the tokenizer decodes of the answer's tokens."""

from __future__ import annotations

import pytest

from dllmserve import SamplingParams
from dllmserve.assets import default_model_path, tasks
from dllmserve.engine.engine import Engine


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_the_final_text_is_the_deltas_and_the_answers_decode(stop_at_eos):
    engine = Engine.from_pretrained(default_model_path())
    ex = tasks.held_out("add", 1)[0]
    params = SamplingParams(
        temperature=0.0, gen_length=16, steps=8, block_length=8, stop_at_eos=stop_at_eos
    )
    engine.add_request("r", tasks.chat_prompt(ex.question), params)
    deltas, last = [], None
    while engine.has_unfinished():
        for u in engine.step():
            deltas.append(u.text_delta)
            last = u
    out = last.output
    answer = last.answer_length if last.answer_length is not None else len(out.token_ids)
    expected = engine.tokenizer.decode(out.token_ids[:answer], skip_special_tokens=True)
    assert out.text == "".join(deltas) == expected
    assert out.text.strip()  # the tiny model answers something
