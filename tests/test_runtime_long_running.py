"""The runtime in a long-running, concurrent process: no history kept, per-request figures, failures confined
to their request, finish reasons and log-probabilities on events."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import GREEDY, TEXTS

from prunex.errors import PrunexError
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams
from prunex.runtime.scoring import score_prompt


def _runtime(tiny_export, **kw) -> Runtime:
    return Runtime(tiny_export[1], device="cpu", threads=1, **kw)


def test_finished_requests_are_handed_over_once_and_forgotten(tiny_export):
    runtime = _runtime(tiny_export)
    gen = runtime.generator()
    for _ in range(3):
        ids = [gen.add_request(runtime.encode(t), GREEDY) for t in TEXTS]
        finished = []
        while not gen.is_done():
            finished += [e.request_id for e in gen.step() if e.finished]
        assert sorted(finished) == ids
        assert all(gen.result(i).finish_reason == "length" for i in ids)
        assert not gen._done  # nothing kept once handed over
    with pytest.raises(PrunexError, match="handed over once"):
        gen.result(ids[0])


def test_each_completion_carries_its_own_kv_figures(tiny_export):
    runtime = _runtime(tiny_export)
    done = runtime.generate([runtime.encode(t) for t in TEXTS], GREEDY)
    layers = runtime.manifest.num_layers
    for c in done:
        assert c.dense_kv_entries == (c.prompt_tokens + len(c.token_ids) - 1) * layers  # last token not fed
        assert 0 < c.kv_entries <= c.dense_kv_entries
    total_kept = sum(c.kv_entries for c in done) / sum(c.dense_kv_entries for c in done)
    assert math.isclose(total_kept, runtime.last_stats["kv_kept_fraction"])


def test_events_carry_finish_reason_and_logprobs(tiny_export):
    runtime = _runtime(tiny_export)
    prompt = runtime.encode(TEXTS[0])
    gen = runtime.generator()
    rid = gen.add_request(prompt, SamplingParams(max_new_tokens=4, ignore_eos=True, logprobs=3))
    events = []
    while not gen.is_done():
        events += gen.step()
    assert [e.finish_reason for e in events] == [None, None, None, "length"]
    # the first token's log-probability is the scored prompt's next-token distribution
    logits = score_prompt(runtime.engine, prompt).next_logits.astype(np.float64)
    expected = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    first = events[0]
    assert abs(first.logprob - expected[first.token_id]) < 1e-4
    assert [t for t, _ in first.top_logprobs] == np.argsort(-expected)[:3].tolist()
    assert first.top_logprobs[0][0] == first.token_id  # greedy
    assert gen.result(rid).token_ids == [e.token_id for e in events]


def test_a_failed_prefill_fails_only_its_request(tiny_export):
    runtime = _runtime(tiny_export)
    gen = runtime.generator()
    good = gen.add_request(runtime.encode(TEXTS[1]), GREEDY)
    gen.step()
    bad = gen.add_request([runtime.manifest.vocab_size + 5], GREEDY)  # a token id the graph cannot gather
    events = gen.step()
    assert [e.finish_reason for e in events if e.request_id == bad] == ["error"]
    failed = gen.result(bad)
    assert failed.finish_reason == "error" and failed.error is not None
    while not gen.is_done():
        gen.step()
    survivor = gen.result(good)
    assert survivor.finish_reason == "length"
    gen.close()
    assert survivor.token_ids == runtime.generate([runtime.encode(TEXTS[1])], GREEDY)[0].token_ids


def test_extreme_sampling_settings_stay_finite(tiny_export):  # found by the server's fuzz test
    runtime = _runtime(tiny_export)
    prompt = runtime.encode(TEXTS[0])
    greedy = runtime.generate([prompt], GREEDY)[0].token_ids
    for params in (SamplingParams(max_new_tokens=10, ignore_eos=True, temperature=1.0, top_p=5e-324, seed=1),
                   SamplingParams(max_new_tokens=10, ignore_eos=True, temperature=5e-324, seed=1)):
        assert runtime.generate([prompt], params)[0].token_ids == greedy  # the nucleus is the top token


def test_prompt_logprobs_come_from_the_prefill_and_equal_scoring(tiny_export):
    runtime = _runtime(tiny_export)
    prompt = runtime.encode(TEXTS[0])
    alone = runtime.generate([prompt], GREEDY)[0]
    [done] = runtime.generate([prompt], SamplingParams(max_new_tokens=10, ignore_eos=True, prompt_logprobs=2))
    assert done.token_ids == alone.token_ids  # the all-logits prefill fills the cache the same way
    scored = score_prompt(runtime.engine, prompt, top=2).logprobs
    assert np.allclose(done.prompt_logprobs.token_logprobs, scored.token_logprobs, atol=1e-6)
    assert [[t for t, _ in top] for top in done.prompt_logprobs.top_logprobs] == [
        [t for t, _ in top] for top in scored.top_logprobs]


def test_scoring_a_long_prompt_never_holds_a_vocabulary_row_per_token(tiny_export):
    # the figures equal a full log-softmax over every position, but numpy never holds (T, vocab) at once (the
    # peak is measured without top-k: with this 257-token vocabulary its Python tuples would dominate)
    import tracemalloc

    from prunex.runtime.scoring import prompt_logprobs

    runtime = _runtime(tiny_export)
    prompt = (runtime.encode(TEXTS[0]) * 40)[:1500]
    logits, _ = runtime.engine.run_prompt(prompt, all_logits=True)  # (T, vocab)
    full = prompt_logprobs(logits, prompt, top=3)
    vocab_rows = len(prompt) * logits.shape[1] * 8  # bytes of (T, vocab) float64
    del logits
    tracemalloc.start()
    plain = score_prompt(runtime.engine, prompt).logprobs
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    scored = score_prompt(runtime.engine, prompt, top=3).logprobs
    assert np.allclose(plain.token_logprobs, full.token_logprobs, atol=1e-6)
    assert np.allclose(scored.token_logprobs, full.token_logprobs, atol=1e-6)
    assert [[t for t, _ in top] for top in scored.top_logprobs] == [[t for t, _ in top] for top in full.top_logprobs]
    assert peak < vocab_rows / 4, (peak, vocab_rows)
