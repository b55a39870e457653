"""Serve several requests from one exported model with continuous batching, streaming each request's text.

Run: prunex export --out exported/smollm2-dcp && python samples/runtime_batching.py exported/smollm2-dcp
"""

import sys

import prunex

runtime = prunex.Runtime(sys.argv[1] if len(sys.argv) > 1 else "exported/smollm2-dcp", device="auto")
if runtime.device_note:
    print(f"(on the CPU: {runtime.device_note})")
gen = runtime.generator()
questions = ["What is the capital of France?", "Name three colours of the rainbow.", "What is 2 + 2?"]
ids = {}
for question in questions:
    messages = [{"role": "user", "content": question}]
    ids[gen.add_request(runtime.encode(messages), prunex.SamplingParams(max_new_tokens=40, stop=["\n\n"]))] = question
    gen.step()  # requests join while the earlier ones are running
while not gen.is_done():
    for event in gen.step():
        if event.finished:
            print(f"[{ids[event.request_id]}] {gen.result(event.request_id).text.strip()}")
stats = gen.stats()
print(f"K/V kept {stats['kv_kept_fraction']:.1%}: {stats['kv_bytes']} of {stats['dense_kv_bytes']} bytes")
