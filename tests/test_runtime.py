"""The runtime: batched rows equal single rows, rows joining mid-flight, sampling, stop strings, capacity, devices."""

from __future__ import annotations

import pytest
import torch
from conftest import GREEDY, TEXTS

from prunex.errors import PrunexError
from prunex.export.decoder import export_decoder
from prunex.prune.lm import PrunedLM
from prunex.runtime.runtime import Runtime
from prunex.runtime.sampling import SamplingParams, filter_logits
from prunex.runtime.session import choose_device
from prunex.runtime.slot_cache import CacheLimits, CapacityError, KVCacheManager
from prunex.runtime.text_stream import TextStream


@pytest.fixture
def runtime(tiny_export):
    return Runtime(tiny_export[1], device="cpu", threads=1)


def _ids(runtime: Runtime) -> list[list[int]]:
    return [runtime.encode(t) for t in TEXTS]


def test_batched_rows_equal_each_row_alone(runtime):
    prompts = _ids(runtime)
    together = [c.token_ids for c in runtime.generate(prompts, GREEDY)]
    alone = [runtime.generate([p], GREEDY)[0].token_ids for p in prompts]
    assert together == alone
    assert runtime.last_stats["kv_kept_fraction"] < 0.95  # entries really left the cache


def test_greedy_runtime_equals_pytorch_physical_removal(runtime, tiny_export):
    lm, _ = tiny_export
    prompts = _ids(runtime)
    reference = lm.generate(prompts, max_new_tokens=10)
    assert [c.token_ids for c in runtime.generate(prompts, GREEDY)] == reference.token_ids


def test_rows_join_mid_flight_and_finish_early(runtime):
    prompts = _ids(runtime)
    alone = [runtime.generate([p], SamplingParams(max_new_tokens=n, ignore_eos=True))[0].token_ids
             for p, n in zip(prompts, (12, 3, 9, 6))]
    gen = runtime.generator()
    first = [gen.add_request(prompts[0], SamplingParams(max_new_tokens=12, ignore_eos=True)),
             gen.add_request(prompts[1], SamplingParams(max_new_tokens=3, ignore_eos=True))]
    for _ in range(2):
        gen.step()
    later = [gen.add_request(prompts[2], SamplingParams(max_new_tokens=9, ignore_eos=True))]
    gen.step()
    assert gen.running == 2  # row 1 finished after 3 tokens and left; row 2 joined
    later.append(gen.add_request(prompts[3], SamplingParams(max_new_tokens=6, ignore_eos=True)))
    while not gen.is_done():
        gen.step()
    got = [gen.result(i) for i in first + later]
    assert [c.token_ids for c in got] == alone
    assert [c.finish_reason for c in got] == ["length"] * 4
    assert runtime.engine.rows == 0  # every row left the cache


def test_a_prefill_budget_feeds_a_long_prompt_between_decode_steps(runtime):
    # the server's schedule: one 16-token chunk a step; the running row decodes a token every step meanwhile,
    # and both end with the tokens each gets alone
    runtime.engine.prefill_chunk = 16
    short, long = _ids(runtime)[1], _ids(runtime)[0] * 4  # 3 and 212 tokens
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    alone = [runtime.generate([p], params)[0].token_ids for p in (short, long)]
    gen = runtime.generator()
    gen.prefill_budget = 16
    first = gen.add_request(short, params)
    gen.step()
    second = gen.add_request(long, params)
    steps_to_join = 0
    while gen.running < 2:
        events = gen.step()
        steps_to_join += 1
        assert [e.request_id for e in events][:1] == [first]  # the running row got its token this step
    assert steps_to_join == -(-len(long) // 16)  # one chunk a step
    assert runtime.engine.rows == 2
    while not gen.is_done():
        gen.step()
    assert [gen.result(i).token_ids for i in (first, second)] == alone


def test_a_request_cancelled_mid_prefill_leaves_nothing(runtime):
    runtime.engine.prefill_chunk = 16
    gen = runtime.generator()
    gen.prefill_budget = 16
    rid = gen.add_request(_ids(runtime)[0] * 4, GREEDY)
    gen.step()
    assert gen.prefilling and gen.waiting == 1 and runtime.engine.rows == 0
    gen.cancel(rid)
    assert gen.is_done() and not gen.prefilling and gen.result(rid).finish_reason == "cancelled"


def test_seeds_make_sampling_reproducible(runtime):
    prompt = _ids(runtime)[0]
    params = SamplingParams(max_new_tokens=12, temperature=1.5, top_k=50, top_p=0.95, seed=7, ignore_eos=True)
    a = runtime.generate([prompt], params)[0].token_ids
    # the same request in a batch with other (greedy) rows gives the same tokens
    b = runtime.generate([prompt, _ids(runtime)[1]], params)[0].token_ids
    c = runtime.generate([prompt], SamplingParams(**{**params.__dict__, "seed": 8}))[0].token_ids
    assert a == b
    assert a != c


def test_top_k_and_top_p_filter_the_tail():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [False, False, True, True]
    # probabilities ~[0.64, 0.24, 0.09, 0.03]: the nucleus of 0.8 needs the first two
    assert torch.isinf(filter_logits(logits, 0, 0.8)).tolist() == [False, False, True, True]


def test_stop_strings_end_the_text(runtime):
    prompt = _ids(runtime)[0]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=3, ignore_eos=True)
    full = runtime.generate([prompt], params)[0]
    at = next(i for i in range(2, len(full.text) - 2) if full.text.find(full.text[i: i + 2]) == i)
    stop = full.text[at: at + 2]
    cut = runtime.generate([prompt], SamplingParams(**{**params.__dict__, "stop": [stop]}))[0]
    assert cut.text == full.text[:at]
    assert cut.finish_reason == "stop"
    assert len(cut.token_ids) < len(full.token_ids)


def test_text_stream_holds_back_a_possible_stop_string():
    class Chars:  # a tokenizer whose token i is chr(i)
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    stream = TextStream(Chars(), ["END"])
    pieces = [stream.push(ord(c)) for c in "abcEN"]
    assert "".join(pieces) == "abc"  # "EN" could be the start of "END"
    assert stream.push(ord("D")) == "" and stream.stopped and stream.text == "abc"


def test_text_stream_decodes_incrementally_as_the_whole_decode_would(runtime):
    """Pushed one token at a time, multi-byte characters and all, the stream's text is the full decode's, and
    each push decodes a short window however long the text grows."""
    tokenizer = runtime.tokenizer
    text = "Zoë's café in Zürich — 東京 🙂 naïve façade. " * 8
    tokens = tokenizer.encode(text, add_special_tokens=False)
    stream = TextStream(tokenizer, [])
    pieces = [stream.push(token) for token in tokens]
    assert all("\ufffd" not in piece for piece in pieces)  # half characters are held back, not shown
    pieces.append(stream.flush())
    assert "".join(pieces) == stream.text == tokenizer.decode(tokens, skip_special_tokens=True)
    assert len(stream.tokens) - stream._prefix < 16
    # a generation that ends inside a character ends as the full decode shows it
    inside = next(n for n in range(1, len(tokens)) if tokenizer.decode(tokens[:n]).endswith("\ufffd"))
    cut = TextStream(tokenizer, [])
    shown = "".join(cut.push(token) for token in tokens[:inside]) + cut.flush()
    assert shown == cut.text == tokenizer.decode(tokens[:inside], skip_special_tokens=True)


def test_streaming_yields_the_generated_text(runtime):
    prompt = _ids(runtime)[2]
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    assert "".join(runtime.stream(prompt, params)) == runtime.generate([prompt], params)[0].text
    assert runtime.engine.rows == 0


def test_chat_messages_use_the_chat_template(runtime):
    messages = [{"role": "user", "content": "hi"}]
    if getattr(runtime.tokenizer, "chat_template", None) is None:
        with pytest.raises(PrunexError, match="chat template"):
            runtime.encode(messages)
    else:
        assert runtime.encode(messages) != runtime.encode("hi")
    with pytest.raises(PrunexError, match="prompt is a string"):
        runtime.encode([1.5])


def test_capacity_overflow_is_a_clear_error(tiny_export):
    out = tiny_export[1]
    tight = Runtime(out, device="cpu", threads=1, max_kv_bytes=2048)
    with pytest.raises(CapacityError, match="over its limit"):
        tight.generate([_ids(tight)[0]], GREEDY)
    assert tight.engine.rows == 0  # nothing half-admitted stays behind
    runtime = Runtime(out, device="cpu", threads=1)
    limit = runtime.manifest.max_positions
    with pytest.raises(CapacityError, match="context"):
        runtime.generate([[1] * (limit - 4)], SamplingParams(max_new_tokens=8))


def test_decoding_up_to_the_context_edge(tmp_path, tiny_export):
    """A dense row decoded to the model's last position: the slot buffers never grow past the context (the
    fused attention refuses buffers longer than its rotary table), and the next step is a clear error."""
    lm, _ = tiny_export
    export_decoder(PrunedLM(lm.base, None), tmp_path / "dense", dense=True, source="tiny-llama")
    runtime = Runtime(tmp_path / "dense", device="cpu", threads=1)
    limit = runtime.manifest.max_positions
    engine = runtime.engine
    logits = engine.prefill([[1] * (limit - 8)])
    for _ in range(8):
        assert engine.cache.capacity <= limit
        logits = engine.decode(logits.argmax(-1))
    assert engine.cache.capacity == limit and int(engine.cache.fill.max()) == limit
    with pytest.raises(CapacityError, match="context"):
        engine.decode(logits.argmax(-1))


def test_running_out_of_kv_bytes_mid_flight_is_an_error_that_loses_nothing(tiny_export):
    probe = Runtime(tiny_export[1], device="cpu", threads=1)
    prompt = _ids(probe)[0]
    gen = probe.generator()
    gen.add_request(prompt, GREEDY)
    gen.step()
    after_prefill = probe.engine.cache.allocated_bytes()
    gen.close()
    runtime = Runtime(tiny_export[1], device="cpu", threads=1, max_kv_bytes=after_prefill)
    gen = runtime.generator()
    rid = gen.add_request(prompt, SamplingParams(max_new_tokens=200, ignore_eos=True))
    with pytest.raises(CapacityError, match="over its limit"):
        while not gen.is_done():
            gen.step()
    tokens = gen.result(rid).token_ids
    assert 1 < len(tokens) < 200  # it ran until the slots it had were full, then said so
    assert probe.generate([prompt], SamplingParams(max_new_tokens=len(tokens), ignore_eos=True))[0].token_ids == tokens
    gen.cancel(rid)
    assert gen.is_done() and gen.result(rid).finish_reason == "cancelled" and runtime.engine.rows == 0


def test_a_full_batch_queues_requests_instead_of_failing(tiny_export):
    runtime = Runtime(tiny_export[1], device="cpu", threads=1, max_batch=2)
    prompts = _ids(runtime)
    gen = runtime.generator()
    ids = [gen.add_request(p, GREEDY) for p in prompts]
    gen.step()
    assert gen.running == 2
    while not gen.is_done():
        assert gen.running <= 2
        gen.step()
    alone = [runtime.generate([p], GREEDY)[0].token_ids for p in prompts]
    assert [gen.result(i).token_ids for i in ids] == alone


def _step(cache: KVCacheManager, key: float, positions: list[int], drop: tuple = ()) -> None:
    """What a run of one token a row does to a 1-layer, 1-head, D=2, R=1 cache: the manager marks the new
    slots, the graph writes the new key / value there (in place) and drops the (row, slot) entries in `drop`,
    the manager stores the rest."""
    cache.reserve(1)
    cache.begin_step(torch.tensor(positions)[:, None])
    rows, slot = torch.arange(cache.rows), cache.seqlens[0].long()
    cache.layer_view("key", 0)[rows, 0, slot] = key
    cache.layer_view("value", 0)[rows, 0, slot] = key + 100
    keep = cache.layer_view("valid", 0).clone()  # (B, W): with one layer and one query, keep's flat layout
    for row, dropped in drop:
        keep[row, dropped] = False
    cache.end_step(keep.flatten(), torch.full((1, cache.rows, 1, 1), key))


def test_cache_appends_masks_holes_and_compacts_in_order():
    limits = CacheLimits(headroom=1, max_holes=0.25)
    prompts = []
    for length in (3, 2):  # two prompts, each prefilled into a cache of its own
        prompt = KVCacheManager(1, 1, 2, 1, torch.device("cpu"), CacheLimits(headroom=0),
                                policy_fields=("positions",))  # positions kept, as for a run-time policy
        prompt.start(1, length)
        prompt.begin_step(torch.arange(length)[None])  # the whole prompt in one run
        prompt.layer_view("key", 0)[0, 0, :length] = torch.arange(length, dtype=torch.float32)[:, None]
        keep, views = prompt.layer_buffers((length,), torch.bool)  # (1, S, W): every query keeps everything
        views[0].fill_(True)
        prompt.end_step(keep, torch.zeros(1, 1, length, 1))
        prompts.append(prompt)
    cache = KVCacheManager(1, 1, 2, 1, torch.device("cpu"), limits, policy_fields=("positions",))
    for prompt in prompts:
        cache.add_rows(prompt)
    assert cache.capacity == 3 + 1 and cache.fill[0].tolist() == [3, 2]
    assert cache.held_bytes() == 5 * cache.bytes_per_entry
    _step(cache, -1.0, [3, 2], drop=[(0, 0)])  # row 0 drops its first entry: a hole, masked, not reused
    valid, positions, key = (cache.layer_view(f, 0) for f in ("valid", "positions", "key"))
    assert cache.fill[0].tolist() == [4, 3] and valid[0].tolist() == [False, True, True, True]
    assert positions[0].tolist() == [0, 1, 2, 3] and cache.layer_view("kint", 0)[0, 0, 3] == -1.0
    _step(cache, -2.0, [4, 3])  # row 0 is full: the layer is compacted first
    assert cache.compactions == 1 and cache.fill[0].tolist() == [4, 4]
    assert positions[0, :4].tolist() == [1, 2, 3, 4]  # kept entries packed in order, then the new one
    assert key[0, 0, :4, 0].tolist() == [1.0, 2.0, -1.0, -2.0]
    assert cache.capacity == 4
    _step(cache, -3.0, [5, 4])  # full and no holes: W grows (kept + new + headroom)
    assert cache.capacity == 4 + 1 + 1 and cache.fill[0].tolist() == [5, 5] and cache.compactions == 2
    assert cache.dense_bytes() == (3 + 2 + 3 * 2) * cache.bytes_per_entry  # 11 tokens fed in all
    cache.remove_rows(torch.tensor([1]))
    assert cache.rows == 1 and cache.layer_view("positions", 0)[0, :4].tolist() == [0, 1, 2, 3]
    assert cache.peak_allocated_bytes >= cache.allocated_bytes()


def test_each_layer_sizes_its_own_slots():
    """A layer that drops most entries shrinks to what it keeps while another keeps everything; growing the full
    layer copies only its own keys and values."""
    cache = KVCacheManager(2, 1, 2, 1, torch.device("cpu"), CacheLimits(headroom=2), policy_fields=("positions",))
    cache.start(1, 16)
    cache.begin_step(torch.arange(16)[None])  # a 16-token prompt in one run
    keep, views = cache.layer_buffers((16,), torch.bool)  # (1, S, W) per layer: the graph's keep outputs
    views[0].fill_(True)
    views[1].fill_(False)
    views[1][:, :, 14:] = True  # layer 1 keeps only the last two entries
    cache.end_step(keep, torch.zeros(2, 1, 16, 1))
    cache.layer_view("value", 0)[0, 0, :, 0] = torch.arange(16.0)
    cache.compact_sparse_layers()
    assert cache.fill[:, 0].tolist() == [16, 2] and cache.widths == [16, 2 + 2]
    assert cache.layer_view("positions", 1)[0, :2].tolist() == [14, 15]
    assert cache.allocated_bytes() == (16 + 4) * cache.bytes_per_entry
    small = cache.layer_view("value", 1)
    cache.reserve(1)  # layer 0 is full and has no holes: it grows, layer 1 has room and stays as it is
    assert cache.widths == [16 + 1 + 2, 4] and cache.layer_view("value", 1) is small
    assert cache.layer_view("value", 0)[0, 0, :16, 0].tolist() == list(range(16))


def test_denormals_cost_nothing_and_the_callers_float_state_is_left_alone(tiny_export):
    """The decisions' MatMul reads every slot's interaction key: fresh ones are zeros, not stale memory (old int
    data reads as denormal floats, ~100x slower). The session's runs flush denormals to zero on a thread of
    their own: the caller's thread keeps IEEE semantics (subnormals exist after a generation)."""
    cache = KVCacheManager(2, 1, 2, 4, torch.device("cpu"), guard=lambda positions: positions + 1)
    cache.start(3, 8)
    assert torch.count_nonzero(cache.layer_view("kint", 1)) == 0
    runtime = Runtime(tiny_export[1], threads=1)
    assert runtime.engine.session.get_session_options().get_session_config_entry(
        "session.set_denormal_as_zero") == "1"
    runtime.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))
    assert torch.tensor(1e-45) * 2 > 0


def test_cpu_is_used_when_cuda_is_absent(tiny_export):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    choice = choose_device("cuda")
    assert choice.device == "cpu" and choice.providers == ["CPUExecutionProvider"] and choice.reason
    runtime = Runtime(tiny_export[1], device="cuda", threads=1)
    assert runtime.device == "cpu" and runtime.device_note
    with pytest.raises(PrunexError, match="device must be"):
        choose_device("gpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and onnxruntime-gpu")
def test_cuda_generation_equals_cpu(tiny_export):
    prompts = [Runtime(tiny_export[1], device="cpu").encode(t) for t in TEXTS]
    cpu = Runtime(tiny_export[1], device="cpu").generate(prompts, GREEDY)
    gpu_runtime = Runtime(tiny_export[1], device="cuda")
    assert gpu_runtime.device == "cuda", gpu_runtime.device_note
    gpu = gpu_runtime.generate(prompts, GREEDY)
    assert [c.token_ids for c in gpu] == [c.token_ids for c in cpu]


def test_bad_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PrunexError, match="not a folder"):
        Runtime(tmp_path / "missing")
    with pytest.raises(PrunexError, match="not found"):
        Runtime(tmp_path)


def test_cache_keeps_only_the_fields_that_are_read():
    """A dense graph without a run-time policy needs keys, values and validity; DCP adds its interaction keys and
    guards, a window policy the positions, an attention policy the scores."""
    cpu = torch.device("cpu")
    assert KVCacheManager(2, 1, 2, 0, cpu).fields == ("key", "value", "valid")
    dcp = KVCacheManager(2, 1, 2, 4, cpu, guard=lambda positions: positions + 1)
    assert dcp.fields == ("key", "value", "kint", "valid", "guard")
    scored = KVCacheManager(2, 1, 2, 0, cpu, policy_fields=("positions", "score"))
    assert scored.fields == ("key", "value", "valid", "positions", "score")
