"""Start-up time of the ``crema`` command: help, and the imports a run pays before its first chunk.

    python benchmarks/bench_startup.py --runs 5
    python benchmarks/bench_startup.py --runs 5 --base /tmp/startup-base/src   # against another tree

Every measurement is a fresh interpreter (``subprocess``), run as the installed ``crema`` entry point
does (``from crema.workflows.cli import main``) with ``PYTHONPATH`` pointing at the tree measured.
With ``--base`` a second source tree (e.g. a ``git worktree`` of an older commit) is measured in the
same run, interleaved command by command, so that both see the same load of a shared machine.
``crema --help`` runs with ``-X importtime``, which gives the import time of the command's module
(``crema.workflows.cli``, the part of the start-up that is crema's) next to the wall time.
Reports the median and the spread (min-max), and records them in benchmarks/RESULTS.md
(section "start-up").
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

THIS_TREE = Path(__file__).resolve().parent.parent / "src"
ENTRY = "import sys; from crema.workflows.cli import main; sys.exit(main())"
# (label, python arguments)
CASES = [
    ("`python -c pass` (interpreter alone)", ["-c", "pass"]),
    ("`crema --help`", ["-X", "importtime", "-c", ENTRY, "--help"]),
    ("`crema run --help`", ["-c", ENTRY, "run", "--help"]),
    ("`import crema.workflows.run` (what `crema run` loads before its first chunk)",
     ["-c", "import crema.workflows.run"]),
]


IMPORT_LABEL = "import of `crema.workflows.cli` in `crema --help` (`-X importtime`)"


def timed(args: list[str], src: Path) -> tuple[float, float | None]:
    """Wall time of one fresh ``python ARGS`` with ``src`` first on the path, and with ``-X importtime``
    the cumulative import time of ``crema.workflows.cli`` in seconds; a failure is an error."""
    env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} (PYTHONPATH={src}) failed:\n{run.stderr}")
    imported = None
    for line in run.stderr.splitlines():  # "import time: self [us] | cumulative | name"
        fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] == "crema.workflows.cli":
            imported = int(fields[1]) / 1e6
    return elapsed, imported


def heavy_modules(src: Path) -> list[str]:
    """The heavy libraries ``crema --help`` imports in ``src``."""
    code = ("import sys, contextlib, io\nfrom crema.workflows.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['--help'])\n    except SystemExit: pass\n"
            "heavy = ('torch', 'xgboost', 'coffea', 'dask', 'onnxruntime', 'matplotlib', 'pyhf', 'awkward', 'pandas')\n"
            "print(' '.join(m for m in heavy if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per command and tree (default: 5)")
    parser.add_argument("--base", type=Path, help="a second source tree (its src/ folder) measured side by side")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    trees = {"this tree": THIS_TREE}
    if args.base:
        trees = {"base": args.base.resolve(), **trees}
    load_before = os.getloadavg()[0]
    labels = [label for label, _ in CASES] + [IMPORT_LABEL]
    times: dict[tuple[str, str], list[float]] = {(t, label): [] for t in trees for label in labels}
    for _ in range(args.runs):
        for label, case in CASES:
            for tree, src in trees.items():
                wall, imported = timed(case, src)
                times[tree, label].append(wall)
                if imported is not None:
                    times[tree, IMPORT_LABEL].append(imported)
    load_after = os.getloadavg()[0]

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    header = "| command | " + " | ".join(f"{t}: median (min-max) [s]" for t in trees) + (" | base / this |" if args.base else " |")
    rows = [header, "|---|" + "---:|" * (len(trees) + (1 if args.base else 0))]
    for label in labels:
        row = f"| {label} | " + " | ".join(cell(times[t, label]) for t in trees)
        if args.base:
            row += f" | {statistics.median(times['base', label]) / statistics.median(times['this tree', label]):.1f}x"
        rows.append(row + " |")
    heavy = {t: heavy_modules(src) for t, src in trees.items()}
    lines = [f"{args.runs} fresh interpreters per command and tree, interleaved; {os.cpu_count()} cores, load "
             f"average {load_before:.1f} before and {load_after:.1f} after (other jobs share the machine).", "",
             *rows, "", "Heavy libraries imported by `crema --help`: "
             + "; ".join(f"{t}: {', '.join(heavy[t]) or 'none'}" for t in trees) + "."]
    if args.base:
        commit = subprocess.run(["git", "-C", str(trees["base"]), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        lines += ["", f"base: `{trees['base']}`" + (f" (commit {commit}, a `git worktree`)" if commit else "") + "."]
    body = "\n".join(lines)
    print(body)
    if not args.no_record:
        from _results import write_section

        command = "python benchmarks/bench_startup.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section("start-up", body, command=command.strip())


if __name__ == "__main__":
    main()
