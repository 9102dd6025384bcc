"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the other sections alone."""

from __future__ import annotations

import datetime
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# crema benchmark results\n\nEach section is rewritten by the script named in it.\n"


def write_section(name: str, body: str, command: str | None = None) -> None:
    """Replace (or append) the section ``name`` in RESULTS.md with ``body`` (markdown)."""
    command = command or "python " + shlex.join(sys.argv)  # quoted: a command that runs as printed
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- begin {name} -->\n## {name}\n\n"
        f"Command: `{command}`  \nRun: {stamp} on {platform.node() or 'unknown'} "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()})\n\n"
        f"{body.strip()}\n<!-- end {name} -->\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
