"""Entry points the benchmarks run as processes of their own, one engine a process: `decode` (prunex, the dense
export, PyTorch), `ortgenai` and `llamacpp` (peers, sharing `peer_cli`), `optimum` (run by path in optimum's own
environment, importing nothing from prunex)."""
