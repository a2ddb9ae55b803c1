"""Writes the reply table of docs/interop.md from what the real servers of the
interop suite answer (tests/interop/scenarios.py).  Needs root, postfix and
dovecot-core, like the suite.

    python docs/gen_interop_table.py            # start the servers, rewrite the table
tests/interop/test_postfix.py checks the committed table against the servers.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))

import exim_harness  # noqa: E402
from harness import PostfixHarness, missing_requirements  # noqa: E402
from scenarios import collect, collect_exim, markdown  # noqa: E402

DOC = ROOT / "docs" / "interop.md"
BEGIN, END = "<!-- replies:begin -->", "<!-- replies:end -->"


def table_in_doc() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()


def main() -> int:
    why = missing_requirements() or exim_harness.missing_requirements()
    if why:
        print(why, file=sys.stderr)
        return 2
    h = PostfixHarness().start()
    try:
        rows = collect(h)
    finally:
        h.stop()
    e = exim_harness.EximHarness().start()
    try:
        rows += collect_exim(e)
    finally:
        e.stop()
    table = markdown(rows)
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
