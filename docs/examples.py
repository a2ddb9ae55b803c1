"""The Python examples of the docs, as scripts: run by
tests/test_docs_examples.py against the connector emulator, and type-checked
with ``mypy --strict`` by ``python docs/examples.py --mypy`` (.ci/run).

Each page's ```python blocks, in order, make one script, after a prelude
that loads ``mailexpress.toml`` as ``cfg`` (pages may rely on it).  A block
right after an ``<!-- no-run -->`` line is left out (a fragment that cannot
stand alone); use it sparingly.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELUDE = 'import mailexpress as mx\n\ncfg = mx.load_config("mailexpress.toml")\n'
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path) -> list[str]:
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip().splitlines()
        if before and before[-1].strip() == "<!-- no-run -->":
            continue
        out.append(m.group(1))
    return out


def script(page: Path) -> str | None:
    found = blocks(page)
    return PRELUDE + "\n\n" + "\n\n".join(found) if found else None


def module_name(page: Path) -> str:
    return "docs_" + re.sub(r"\W", "_", page.stem.lower())


def write_all(directory: Path) -> list[Path]:
    files = []
    for page in pages():
        code = script(page)
        if code is not None:
            path = directory / f"{module_name(page)}.py"
            path.write_text(f"# from {page.relative_to(ROOT)}\n{code}")
            files.append(path)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mypy", action="store_true", help="type-check every page's script (mypy --strict)")
    ap.add_argument("--list", action="store_true", help="print each page's script")
    args = ap.parse_args()
    if args.list:
        for page in pages():
            code = script(page)
            if code:
                print(f"# ==== {page.relative_to(ROOT)}\n{code}")
        return 0
    if args.mypy:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_all(Path(tmp))
            print(f"mypy --strict on the examples of {len(files)} pages")
            # each page is its own program: checked one by one, so that their
            # top-level names do not meet
            failed = 0
            # Django ships no type information (django-stubs is a project of its own)
            ini = Path(tmp) / "mypy.ini"
            ini.write_text("[mypy]\n\n[mypy-django.*]\nignore_missing_imports = True\n")
            for f in files:
                proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ini), "--strict",
                                       str(f)], capture_output=True, text=True, cwd=tmp,
                                      env=dict(os.environ, MYPYPATH=str(ROOT)))
                if proc.returncode:
                    failed += 1
                    print(proc.stdout.replace(str(Path(tmp)) + "/", ""), end="")
            return 1 if failed else 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
