"""Inference benchmark: the same model on the same inputs, one thread each.

- onnxruntime fp32 (the bundle's model.onnx) vs PyTorch eager (the checkpoint
  it was exported from), at batch 1 and 16 of 4 s clips (targets >= 2.5x and
  >= 2x), each ratio the median of rounds timed in alternation with fp32;
- each quantized / optimised variant of the bundle vs fp32;
- file sizes;
- how close fp32 and PyTorch come to the core: the model's GFLOP per pass
  (PyTorch's FLOP counter) over each one's time, against onnxruntime's own
  MatMul on one large square matrix, the most this core gives one thread.

Run after `make demo` (or pass your own): `python bench/inference.py
[--checkpoint demo-output/run/best] [--bundle demo-output/bundle]`, or
`python bench/inference.py --preset base` for a random-weight model of a
preset, exported and quantized here (calibrated on random features: its
speed is the model's, its accuracy means nothing).
"""

from __future__ import annotations

import os

# One thread for every pool, set before numpy, torch or onnxruntime load.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch.utils.flop_counter import FlopCounterMode

from slc.config import ModelConfig
from slc.export.exporter import FRAMES_4S, TORCH, export_model
from slc.export.quantize import p50_ms, paired_speedups, quantize_all
from slc.runtime.bundle import FP32, session
from slc.training import checkpoint as ckpt
from slc.training.model import LanguageClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("demo-output/run/best"))
    parser.add_argument("--bundle", type=Path, default=Path("demo-output/bundle"))
    parser.add_argument("--preset", help="a random-weight model of this preset instead of --checkpoint and --bundle")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds; ratios are their median")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="slc-bench-inference-") as scratch:
        if args.preset:
            model, files = random_model(args.preset, Path(scratch))
        else:
            for path in (args.checkpoint, args.bundle):
                if not path.is_dir():
                    raise SystemExit(f"{path} does not exist: run `make demo` first, or pass --checkpoint and --bundle")
            model, _, _, _ = ckpt.load(args.checkpoint)
            info = json.loads((args.bundle / "bundle.json").read_text())
            files = {name: args.bundle / v["file"] for name, v in info["variants"].items() if "file" in v and "error" not in v}
        model.eval()
        compare(model, files, args.rounds, args.repeats, args.preset or str(args.bundle))


def random_model(preset: str, directory: Path) -> tuple[LanguageClassifier, dict[str, Path]]:
    """A random-weight model of `preset` for 4 languages, its fp32 export and
    the quantized variants `slc export` makes, calibrated on random features."""
    torch.manual_seed(0)
    model = LanguageClassifier(ModelConfig.preset(preset), num_labels=4).eval()
    print(f"exporting and quantizing a random-weight {preset!r} model", flush=True)
    files = {FP32: export_model(model, directory / "model.onnx")}
    rng = np.random.default_rng(0)
    calibration = [(rng.standard_normal((4, FRAMES_4S, 80), dtype=np.float32), np.full(4, FRAMES_4S, dtype=np.int64))
                   for _ in range(4)]
    made = quantize_all(files[FP32], directory, calibration)
    files.update({name: path for name, path in made.items() if isinstance(path, Path)})
    return model, files


def compare(model: LanguageClassifier, files: dict[str, Path], rounds: int, repeats: int, title: str) -> None:
    """PyTorch eager and every variant in `files` against fp32, printed."""
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 16):
        features = rng.standard_normal((batch, FRAMES_4S, 80)).astype(np.float32)
        lengths = np.full(batch, FRAMES_4S, dtype=np.int64)
        inputs = {"features": features, "frame_lengths": lengths}
        features_t, lengths_t = torch.from_numpy(features), torch.from_numpy(lengths)

        def torch_run() -> None:
            with torch.inference_mode():
                torch.softmax(model(features_t, lengths_t), -1)

        runs = {name: (lambda s=session(path, threads=1): s.run(None, inputs)) for name, path in files.items()}
        # Ratios from rounds timed in alternation with fp32: load from
        # elsewhere on the machine slows both sides of a pair alike.
        speedups = paired_speedups({**runs, TORCH: torch_run}, rounds, repeats)
        fp32_ms = p50_ms(runs[FP32], repeats)
        timings = {name: fp32_ms / speedups[name] for name in runs}
        rows.append((batch, fp32_ms / speedups[TORCH], timings, model_gflop(model, features_t, lengths_t)))

    print(f"\n{title}: 4 s clips ({FRAMES_4S} frames), one thread; ms: p50 of {repeats} runs; "
          f"ratios: median of {rounds} rounds each timed against fp32\n")
    names = list(files)
    print(f"{'batch':>5}  {'torch ms':>9}  " + "  ".join(f"{n:>14}" for n in names))
    for batch, torch_ms, timings, _ in rows:
        print(f"{batch:>5}  {torch_ms:>9.2f}  " + "  ".join(f"{timings[n]:>11.2f} ms" for n in names))
    print(f"\n{'variant':<14}  {'size MB':>8}  {'vs torch b1':>11}  {'vs torch b16':>12}  {'vs fp32 b1':>10}  {'vs fp32 b16':>11}")
    for name in names:
        size = files[name].stat().st_size / 1e6
        vs_torch = [torch_ms / timings[name] for _, torch_ms, timings, _ in rows]
        vs_fp32 = [timings["fp32"] / timings[name] for _, _, timings, _ in rows]
        print(f"{name:<14}  {size:>8.2f}  {vs_torch[0]:>10.2f}x  {vs_torch[1]:>11.2f}x  {vs_fp32[0]:>9.2f}x  {vs_fp32[1]:>10.2f}x")
    peak = matmul_peak_gflops()
    print(f"\n{'batch':>5}  {'GFLOP':>6}  {'torch GFLOP/s':>13}  {'fp32 GFLOP/s':>12}  (onnxruntime MatMul 1024^3 on this core: {peak:.0f} GFLOP/s)")
    for batch, torch_ms, timings, gflop in rows:
        print(f"{batch:>5}  {gflop:>6.2f}  {gflop / torch_ms * 1e3:>13.0f}  {gflop / timings['fp32'] * 1e3:>12.0f}")
    fp32 = [torch_ms / timings["fp32"] for _, torch_ms, timings, _ in rows]
    print(f"\nORT fp32 vs PyTorch eager: {fp32[0]:.2f}x at batch 1, {fp32[1]:.2f}x at batch 16 (targets >= 2.5x and >= 2x)")
    int8 = [name for name in names if name.startswith("int8")]
    if int8:
        best = max(int8, key=lambda name: min(timings["fp32"] / timings[name] for _, _, timings, _ in rows))
        vs_fp32 = [timings["fp32"] / timings[best] for _, _, timings, _ in rows]
        print(f"fastest int8 ({best}) vs fp32: {vs_fp32[0]:.2f}x at batch 1, {vs_fp32[1]:.2f}x at batch 16 "
              "(target on `base`: >= 1.5x)")



def model_gflop(model: LanguageClassifier, features: torch.Tensor, lengths: torch.Tensor) -> float:
    """GFLOP of one forward pass, as PyTorch's FLOP counter counts them (matrix products and convolutions)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(features, lengths)
    return counter.get_total_flops() / 1e9


def matmul_peak_gflops(n: int = 1024, rounds: int = 5, repeats: int = 10) -> float:
    """GFLOP/s of onnxruntime's fp32 MatMul of two n x n matrices on one thread, best of `rounds`."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight],
    )  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    matmul = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((n, n), dtype=np.float32)
    best_ms = min(p50_ms(lambda: matmul.run(None, {"x": x}), repeats) for _ in range(rounds))
    return 2 * n**3 / best_ms / 1e6


if __name__ == "__main__":
    main()
