"""Pruning checkpoints on disk, tied to their base model's hash: the files, not the models built from them.

- meta.py: `pruning.json` + `pruning.safetensors`, the format every method shares.
- ltp.py: the extra files of an LTP checkpoint (the fine-tuned and the stage-1 dense classifier).
`prunex.loading` builds ready models (`load_lm`, `load_ltp`) from these files.
"""
