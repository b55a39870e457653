"""Runtime: an exported decoder dir loaded for generation (`import prunex; prunex.Runtime(dir)`).

    rt = prunex.Runtime("exported/", device="auto")
    [done] = rt.generate(["The capital of France is"], SamplingParams(max_new_tokens=16))
    for piece in rt.stream([{"role": "user", "content": "Hi!"}]):
        print(piece, end="")
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prunex.data.prompts import Prompt, encode_prompt
from prunex.errors import PrunexError
from prunex.prune.policy_spec import PolicySpec
from prunex.runtime.engine import DecoderEngine
from prunex.runtime.generator import Completion, Generator
from prunex.runtime.sampling import SamplingParams
from prunex.runtime.slot_cache import CacheLimits


def load_tokenizer(directory: str | Path):
    """The tokenizer saved beside an exported model."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise PrunexError(f"no usable tokenizer files in {directory}: {err}") from err


class Runtime:
    """An exported decoder (pruned or dense) on CPU or CUDA, ready to generate.

    device: "auto" (CUDA when onnxruntime-gpu and a GPU are there), "cpu" or "cuda"; when CUDA was asked for
    and is not usable, `device_note` says why. threads: ONNX Runtime intra-op threads (None: torch's count).
    policy: a run-time keep policy (window, sinks, h2o, tova) on top of the graph's own decisions.
    """

    def __init__(self, directory: str | Path, device: str = "auto", threads: int | None = None,
                 max_batch: int = 16, max_kv_bytes: int | None = None, policy: PolicySpec | None = None) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise PrunexError(f"{directory} is not a folder: give a dir written by `prunex export`")
        self.engine = DecoderEngine(self.directory, device, threads, CacheLimits(max_rows=max_batch,
                                                                                 max_bytes=max_kv_bytes),
                                   policy=policy)
        self.manifest = self.engine.manifest
        self.tokenizer = load_tokenizer(self.directory)
        self.device = self.engine.device_choice.device
        self.device_note = self.engine.device_choice.reason
        self.last_stats: dict = {}  # Generator.stats() of the last generate() / stream(), all its requests
        # together; each Completion carries its own request's K/V figures

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a text, of chat messages (through the tokenizer's chat template), or ids as given."""
        return encode_prompt(self.tokenizer, prompt)

    def generator(self) -> Generator:
        """A Generator over this runtime's engine (one at a time: it owns the KV cache). `generate` and `stream`
        take it for one call; concurrent callers (a server) share one generator driven by one loop instead:
        see `prunex.serve.scheduler.Scheduler`."""
        if self.engine.rows:
            raise PrunexError("the runtime's engine is busy with another generator's rows: concurrent callers "
                              "must share one Generator driven by one loop (prunex.serve.scheduler.Scheduler)")
        return Generator(self.engine, self.tokenizer, self.manifest.eos_token_id)

    def generate(self, prompts: list[Prompt], params: SamplingParams | None = None) -> list[Completion]:
        """Run all prompts to completion (continuously batched up to max_batch rows); completions in order."""
        gen = self.generator()
        try:
            ids = [gen.add_request(self.encode(p), params) for p in prompts]
            while not gen.is_done():
                gen.step()
            self.last_stats = gen.stats()
            done = [gen.result(i) for i in ids]
            failed = next((c.error for c in done if c.error is not None), None)
            if failed is not None:
                raise failed
            return done
        finally:
            gen.close()

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one request as it is generated."""
        gen = self.generator()
        rid = gen.add_request(self.encode(prompt), params)
        try:
            while not gen.is_done():
                for event in gen.step():
                    if event.finish_reason == "error":
                        raise gen.result(rid).error
                    if event.text:
                        yield event.text
            self.last_stats = gen.stats()
        finally:
            gen.close()  # a consumer that stops early frees the rows
