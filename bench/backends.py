"""Raw model forward per inference backend and precision: windows per second and x eager.

The forward only (no pipeline): PhaseNet (original weights) on a fixed preprocessed
batch of ``--batch`` windows of 3001 samples, ``--threads`` threads. Contenders are
built once (exports outside the clock), checked against eager on the load-time probe
batch (max |diff| printed, fp32 must be <= 1e-4), then timed interleaved: every
repeat runs each contender ``--forwards`` times in turn, so drifting machine load
hits all alike; medians with min/max over repeats.

Contenders (``--only`` selects by name):

* ``eager``            torch fp32, the reference
* ``eager-frozen``     torch.jit.trace + freeze + optimize_for_inference (oneDNN fusions)
* ``bf16``             rtpick's ``bf16``: the model traced under torch bfloat16 autocast and frozen
                       (TorchScript), the batch split over ``threads`` single-threaded workers
* ``bf16-autocast``    the same split, the model run under autocast untraced (``bf16`` before)
* ``bf16-team``        the frozen trace on one OpenMP team of ``threads`` (``bf16`` before the split)
* ``onnxruntime``      rtpick's ONNX Runtime session (no spinning between runs)
* ``onnxruntime-spin`` the same with the intra-op pool spinning (ONNX Runtime's default)
* ``onnxruntime-fp16`` ONNX Runtime on the model converted to fp16 (I/O fp32); ONNX Runtime
                       has no bf16 convolution on CPU. (Its graph optimisation level is
                       ORT_ENABLE_ALL by default, so rtpick's session already has it.)
* ``openvino``         rtpick's OpenVINO fp32: THROUGHPUT hint, the batch split over its streams
* ``openvino-latency`` the same with the LATENCY hint: one stream of ``threads`` threads
* ``openvino-pinned``  ``openvino`` with its threads pinned to cores (OpenVINO's default)
* ``openvino-static``  OpenVINO fp32 compiled for exactly ``--batch`` windows, partial batches padded
* ``openvino-bf16``    ``openvino`` with ``INFERENCE_PRECISION_HINT = bf16``
* ``openvino-bf16-latency`` the same, LATENCY hint

Not here: OpenVINO int8 from ONNX Runtime's QDQ quantisation of the ONNX file (no NNCF)
ran 7x slower than OpenVINO fp32 and differed from eager by 0.16 in probability.

    python bench/backends.py                       # all, 2 threads, batch 64, 7 repeats
    python bench/backends.py --only onnxruntime openvino bf16 --repeats 9   # eager always runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if "SEISBENCH_CACHE_ROOT" not in os.environ:
    _cache = Path(tempfile.mkdtemp(prefix="rtpick-bench-cache-"))
    shutil.copytree(REPO.parent / "shared" / "seisbench-cache", _cache, dirs_exist_ok=True)
    os.environ["SEISBENCH_CACHE_ROOT"] = str(_cache)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rtpick.inference import backends  # noqa: E402
from rtpick.inference.models import load_model  # noqa: E402

Forward = Callable[[torch.Tensor], Any]


def _frozen(model: torch.nn.Module, x: torch.Tensor) -> Forward:
    with torch.no_grad():
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x[:2]).eval()))
    return traced


def _ort_spinning(onnx: Path, threads: int) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x.numpy()})[0]


def _ort_fp16(onnx_path: Path, threads: int) -> Forward:
    """ONNX Runtime on the ONNX file converted to fp16 (inputs and outputs kept fp32), rtpick's session options."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = onnx_path.with_name("fp16-" + onnx_path.name)
    onnx.save(convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True), str(fp16))
    session = backends.OnnxBackend(torch.nn.Identity(), fp16, threads)
    return session.forward


def _openvino_static(model: torch.nn.Module, onnx: Path, threads: int, batch: int) -> Forward:
    """OpenVINO fp32 compiled for exactly ``batch`` windows (one stream); partial batches padded with zeros."""
    import openvino as ov

    core = ov.Core()
    net = core.read_model(str(onnx))
    net.reshape([batch, *backends.probe_batch(model, 1).shape[1:]])
    request = core.compile_model(net, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                              "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}).create_infer_request()
    pad = np.zeros(net.input(0).get_shape(), dtype=np.float32)

    def forward(x: torch.Tensor) -> np.ndarray:
        pad[: len(x)] = x.numpy()
        return request.infer({0: pad}, share_inputs=True)[0][: len(x)]

    return forward


def contenders(model: torch.nn.Module, x: torch.Tensor, threads: int, cache: Path) -> dict[str, Forward]:
    """Every contender's forward, built (and exported) once."""
    sha = backends.weights_sha256(model)
    onnx = backends._cached(model, sha, cache)

    def ov(**properties: Any) -> Forward:
        return backends.OpenVinoBackend(model, onnx, threads, properties).forward

    built = {name: backends.build(name, model, sha, threads, cache).forward for name in ("eager", "bf16", "onnxruntime", "openvino")}
    built["bf16-autocast"] = backends.Bf16Backend(model, threads, frozen=False).forward
    built["bf16-team"] = backends.Bf16Backend(model, 1).forward  # one part, the caller's torch threads
    built["eager-frozen"] = _frozen(model, x)
    built["onnxruntime-spin"] = _ort_spinning(onnx, threads)
    built["onnxruntime-fp16"] = _ort_fp16(onnx, threads)
    built["openvino-latency"] = ov(PERFORMANCE_HINT="LATENCY")
    built["openvino-pinned"] = ov(ENABLE_CPU_PINNING=True)
    built["openvino-static"] = _openvino_static(model, onnx, threads, len(x))
    built["openvino-bf16"] = ov(INFERENCE_PRECISION_HINT="bf16")
    built["openvino-bf16-latency"] = ov(INFERENCE_PRECISION_HINT="bf16", PERFORMANCE_HINT="LATENCY")
    return built


def _flat(y: Any) -> np.ndarray:
    parts = y if isinstance(y, (tuple, list)) else (y,)
    return np.concatenate([np.asarray(p.float() if isinstance(p, torch.Tensor) else p, dtype=np.float32).ravel() for p in parts])


def timed(forwards: dict[str, Forward], x: torch.Tensor, repeats: int, per_repeat: int) -> dict[str, list[float]]:
    """Windows/s of each forward on ``x``, contenders interleaved within every repeat."""
    rates: dict[str, list[float]] = {name: [] for name in forwards}
    for f in forwards.values():
        f(x)  # warm-up (and first-shape work)
    for _ in range(repeats):
        for name, f in forwards.items():
            t0 = time.perf_counter()
            for _ in range(per_repeat):
                f(x)
            rates[name].append(per_repeat * len(x) / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--partial", type=int, nargs="*", default=[16], help="partial batch sizes also timed (streaming sends them)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--forwards", type=int, default=4, help="forwards per contender per repeat")
    ap.add_argument("--only", nargs="*", help="contender names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("seisbench:PhaseNet/original").model
    x = backends.probe_batch(model, args.batch)
    with tempfile.TemporaryDirectory(prefix="rtpick-bench-backends-") as cache:
        forwards = contenders(model, x, args.threads, Path(cache))
        if args.only:
            forwards = {k: v for k, v in forwards.items() if k in args.only or k == "eager"}
        probe = backends.probe_batch(model)
        with torch.inference_mode():
            ref = _flat(forwards["eager"](probe))
            diffs = {name: float(np.max(np.abs(_flat(f(probe)) - ref))) for name, f in forwards.items()}
            results = {size: timed(forwards, x[:size], args.repeats, args.forwards) for size in [args.batch, *args.partial]}
    print(f"# raw forward, PhaseNet original, windows of 3 x 3001, {args.threads} threads, {args.repeats} interleaved "
          f"repeats of {args.forwards} forwards; torch {torch.__version__}, onnxruntime {_version('onnxruntime')}, "
          f"openvino {_version('openvino')}")
    for size, rates in results.items():
        eager = statistics.median(rates["eager"])
        print(f"\nbatch {size:<13d} {'windows/s':>10s} {'(min':>7s} {'max)':>7s} {'x eager':>8s}  max|diff| vs eager (probe)")
        for name, r in rates.items():
            print(f"{name:22s} {statistics.median(r):10.0f} {min(r):7.0f} {max(r):7.0f} {statistics.median(r) / eager:8.2f}  {diffs[name]:.2g}")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
