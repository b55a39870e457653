"""ONNX Runtime sessions: execution provider choice (CPU / CUDA), threads, and binding torch tensors by pointer.

The runtime keeps its tensors (the KV cache above all) in torch tensors on the session's device and hands ONNX
Runtime their addresses through IOBinding, so nothing is copied between steps, on CPU as on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunex.devices import check_device_name
from prunex.errors import PrunexError

_NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
                torch.int8: np.int8, torch.bool: np.bool_}


@dataclass
class DeviceChoice:
    """The device a session runs on, and why CUDA was not used when it was asked for."""

    device: str  # "cpu" | "cuda"
    providers: list[str]
    reason: str | None = None  # set when device="cuda"/"auto" fell back to the CPU


def choose_device(device: str = "auto") -> DeviceChoice:
    """Pick the execution providers for `device` ("auto" | "cpu" | "cuda")."""
    import onnxruntime as ort

    check_device_name(device)
    if device == "cpu":
        return DeviceChoice("cpu", ["CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = "onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)"
    elif not torch.cuda.is_available():
        reason = "no CUDA GPU is visible to torch"
    else:
        return DeviceChoice("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    return DeviceChoice("cpu", ["CPUExecutionProvider"], reason if device == "cuda" else None)


def make_session(model_path: str | Path, device: str = "cpu", threads: int | None = None):
    """An InferenceSession on `device`; returns (session, DeviceChoice).

    threads: intra-op threads (None: as many as torch uses). A CUDA session that ONNX Runtime could not
    place on the GPU falls back to the CPU with the reason recorded.
    """
    import onnxruntime as ort

    choice = choose_device(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")  # see OwnThreadSession
    runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunex-onnxruntime")
    try:
        session = runner.submit(ort.InferenceSession, str(model_path), options, providers=choice.providers).result()
    except Exception as err:  # onnxruntime raises its own exception types
        runner.shutdown()
        raise PrunexError(f"ONNX Runtime could not load {model_path}: {err}") from err
    if choice.device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        choice = DeviceChoice("cpu", ["CPUExecutionProvider"], "ONNX Runtime could not start its CUDA provider")
    return OwnThreadSession(session, runner), choice


class OwnThreadSession:
    """An InferenceSession created and run on a thread of its own; everything else is the session's.

    Its runs flush denormal floats to zero (`session.set_denormal_as_zero`): attention over long contexts
    produces them (the softmax's tail), and on the CPU arithmetic on them is ~100x slower (a batch-8 x 2048
    prefill: 26 s with them, 20 s without). ONNX Runtime sets that flag on its pool threads and on the thread
    that creates the session, for good; on the caller's thread it would change the float semantics of the
    whole application, hence this thread. A run costs a hand-over to it (tens of microseconds).
    """

    def __init__(self, session, runner: ThreadPoolExecutor) -> None:
        self._session, self._runner = session, runner

    def run(self, *args, **kwargs):
        return self._runner.submit(self._session.run, *args, **kwargs).result()

    def run_with_iobinding(self, binding, run_options=None):
        return self._runner.submit(self._session.run_with_iobinding, binding, run_options).result()

    def __getattr__(self, name: str):
        return getattr(self._session, name)


class Binder:
    """Binds torch tensors (contiguous, on the session's device) as inputs and outputs of one IOBinding."""

    def __init__(self, session, device: torch.device) -> None:
        self.binding = session.io_binding()
        self.device = device
        self._device_type = "cuda" if device.type == "cuda" else "cpu"
        self._device_id = device.index or 0
        self._alive: dict[str, torch.Tensor] = {}  # ORT holds raw pointers: the bound tensors must stay alive

    def _bind(self, method, name: str, tensor: torch.Tensor) -> None:
        if not tensor.is_contiguous():
            raise PrunexError(f"internal: {name} must be contiguous to bind")
        self._alive[name] = tensor
        method(name, self._device_type, self._device_id, _NUMPY_TYPES[tensor.dtype], tuple(tensor.shape),
               tensor.data_ptr())

    def input(self, name: str, tensor: torch.Tensor) -> None:
        """Bind `tensor` as the input `name` (zero-size tensors go through a tiny host OrtValue)."""
        if tensor.numel() == 0:
            import onnxruntime as ort

            empty = np.zeros(tuple(tensor.shape), _NUMPY_TYPES[tensor.dtype])
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(empty))
            return
        self._bind(self.binding.bind_input, name, tensor)

    def output(self, name: str, tensor: torch.Tensor) -> None:
        """Bind `tensor` (preallocated with the output's exact shape) as the output `name`."""
        if tensor.numel() == 0:  # nothing to write: let ONNX Runtime hold the empty result
            self.binding.bind_output(name, self._device_type, self._device_id)
            return
        self._bind(self.binding.bind_output, name, tensor)


@contextmanager
def torch_on_one_thread() -> Iterator[None]:
    """Run the runtime's small torch ops (cache updates, sampling) on the calling thread only.

    ONNX Runtime's pool threads spin for a while after a run; torch ops that fan out to their own threads then
    wait for cores those threads hold (measured on 2 cores, batch 8: 60 ms a step with torch on 2 threads,
    41 ms on 1). The caller's torch setting is restored on exit.

    torch's thread count is not one clean process-wide value: with OpenMP, a thread that sets it keeps its own
    setting while the main thread's setting is what new threads start from (seen with torch 2.13). So toggling
    it from several threads at once is not safe. A server must run all torch work on one thread and set that
    thread to 1 once (`prunex.serve.scheduler` does, in its loop thread); this block is then a no-op there, and
    the settings of uvicorn's and the caller's threads are never touched.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)
