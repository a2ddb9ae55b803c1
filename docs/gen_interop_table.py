"""Writes the reply table of docs/interop.md from what the real servers of the
interop suite answer (tests/interop/scenarios.py).  Needs root, postfix and
dovecot-core, like the suite.

    python docs/gen_interop_table.py            # start the servers, rewrite the table
tests/interop/test_postfix.py and test_oauth.py check the committed tables
against the servers.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))

import exim_harness  # noqa: E402
from harness import PostfixHarness, missing_requirements  # noqa: E402
from oauth_harness import OAuthHarness  # noqa: E402
from scenarios import collect, collect_exim, collect_oauth, markdown  # noqa: E402

DOC = ROOT / "docs" / "interop.md"
BEGIN, END = "<!-- replies:begin -->", "<!-- replies:end -->"
OAUTH_BEGIN, OAUTH_END = "<!-- oauth-replies:begin -->", "<!-- oauth-replies:end -->"


def table_in_doc(begin: str = BEGIN, end: str = END) -> str:
    text = DOC.read_text()
    return text[text.index(begin) + len(begin):text.index(end)].strip()


def oauth_table_in_doc() -> str:
    return table_in_doc(OAUTH_BEGIN, OAUTH_END)


def _replace(text: str, begin: str, end: str, table: str) -> str:
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}\n{end}{tail}"


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
    o = OAuthHarness().start()
    try:
        oauth_rows = collect_oauth(o)
    finally:
        o.stop()
    table, oauth_table = markdown(rows), markdown(oauth_rows)
    DOC.write_text(_replace(_replace(DOC.read_text(), BEGIN, END, table), OAUTH_BEGIN, OAUTH_END, oauth_table))
    print(table)
    print(oauth_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
