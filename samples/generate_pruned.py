"""Generate with the built-in pruned SmolLM2 from Python, and see how much of the K/V cache it kept.

Run: python samples/generate_pruned.py
"""

from prunex import load_lm

lm = load_lm()  # the built-in default: SmolLM2-135M-Instruct with its shipped DCP heads
prompts = ["The capital of France is", "Photosynthesis is the process by which"]
token_ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
result = lm.generate(token_ids, max_new_tokens=48, eos_token_id=lm.tokenizer.eos_token_id)
for prompt, new in zip(prompts, result.token_ids):
    print(prompt + lm.tokenizer.decode(new, skip_special_tokens=True))
print(f"K/V kept: {result.kv_kept_fraction:.1%} ({result.kv_bytes} of {result.dense_kv_bytes} bytes)")
