"""cProfile of one HH->bbWW run (iterative executor) on generated events: where a chunk's time goes.

    python benchmarks/bench_processor.py ...            # writes the generated inputs first
    python benchmarks/profile_processor.py systematics benchmarks/work/tt_sl_*.root --chunksize 50000 --maxchunks 1

Variants: ``plain`` (no ML, no corrections), ``nominal`` (corrections without variations),
``systematics`` (all variations), ``deephme`` (DeepHME + all variations). A warm-up chunk runs first,
so imports and one-off set-up stay out of the profile. cProfile slows awkward-heavy code several
times over: read the entries as shares of the run, not as rates.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

DEEPHME = {"models": {"sl": "predict_quantiles3D_SL_v3", "dl": "predict_quantiles3D_DL_v8"}}
VARIANTS = {
    "plain": {},
    "nominal": {"corrections": {"systematics": False}},
    "systematics": {"corrections": {"systematics": True}},
    "deephme": {"corrections": {"systematics": True}, "deephme": DEEPHME},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--chunksize", type=int, default=50_000)
    parser.add_argument("--maxchunks", type=int, default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--save", type=Path, help="write the pstats file here")
    args = parser.parse_args()

    import yaml

    from crema.workflows.config import load_config
    from crema.workflows.run import run

    config = {"luminosity_fb": 7.98,
              "executor": {"name": "iterative", "chunksize": args.chunksize, "maxchunks": args.maxchunks,
                           "progress": False},
              "processor": {"name": "hhbbww", "options": VARIANTS[args.variant]},
              "datasets": [{"name": "bench", "kind": "background", "process": "ttbar", "xsec_pb": 1.0,
                            "files": [str(f.resolve()) for f in args.files]}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.yaml"
        path.write_text(yaml.safe_dump(config))
        cfg = load_config(path)
        run(cfg.with_executor(chunksize=2000, maxchunks=1))  # warm-up
        profile = cProfile.Profile()
        profile.enable()
        run(cfg)
        profile.disable()
    if args.save:
        profile.dump_stats(args.save)
    stats = pstats.Stats(profile).strip_dirs()
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top // 2)


if __name__ == "__main__":
    main()
