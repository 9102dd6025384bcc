"""Resident memory of one onnxruntime session fed batches of changing size (DeepHME SL model).

In a processor the number of selected events differs in every chunk, channel and jet variation,
so a model sees a new batch size again and again. onnxruntime's memory patterns (one plan, and
arena space, per input shape seen) then grow the process over a long run; crema's sessions
(:func:`crema.models.onnx._get_session`) switch them off. Each setting runs in its own process.

    nice python benchmarks/bench_onnx_memory.py --calls 400 --write
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHECKPOINTS = (20, 100, 200)


def measure(setting: str, calls: int) -> dict:
    """RSS (MB) after some calls on batch sizes drawn from 48..4080 (multiples of 48, as crema pads)."""
    import numpy as np
    import onnxruntime as ort
    import psutil

    from crema.models.deephme import DeepHME
    from crema.models.onnx import _get_session

    path = DeepHME("SL", None).model_paths["even"]
    if setting == "crema":
        session = _get_session(path, 1, 1, ("CPUExecutionProvider",))
    else:  # onnxruntime's defaults otherwise as crema sets them, memory patterns on
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_mem_pattern = True
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    rng = np.random.default_rng(0)
    rss = {}
    for i, n in enumerate(rng.integers(1, 86, calls) * 48, start=1):
        session.run(None, {meta.name: rng.normal(size=(int(n), meta.shape[1])).astype(np.float32)})
        if i in (*CHECKPOINTS, calls):
            rss[i] = psutil.Process().memory_info().rss / 2**20
    return {"enable_mem_pattern": session.get_session_options().enable_mem_pattern, "rss": rss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--write", action="store_true", help="write the result into benchmarks/RESULTS.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.calls)))
        return
    results = {}
    for setting in ("memory patterns on", "crema"):
        out = subprocess.run([sys.executable, __file__, "--calls", str(args.calls), "--child", setting],
                             capture_output=True, text=True, check=True)
        results[setting] = json.loads(out.stdout.splitlines()[-1])
    points = sorted({c for c in (*CHECKPOINTS, args.calls) if c <= args.calls})
    lines = ["| session | " + " | ".join(f"after {c} calls" for c in points) + f" | growth from call {points[0]} |",
             "|---|" + "---:|" * (len(points) + 1)]
    for setting, r in results.items():
        rss = {int(k): v for k, v in r["rss"].items()}
        cells = " | ".join(f"{rss[c]:.1f}" for c in points)
        lines.append(f"| {setting} (enable_mem_pattern={r['enable_mem_pattern']}) | {cells} "
                     f"| {rss[points[-1]] - rss[points[0]]:+.1f} MB |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        from _results import write_section

        body = (f"DeepHME SL model, one session, {args.calls} calls on random batch sizes (multiples of 48 "
                f"from 48 to 4080, as crema pads), one thread; RSS in MB of the whole process (imports included).\n\n"
                f"{table}\n")
        write_section("onnxruntime memory", body)


if __name__ == "__main__":
    main()
