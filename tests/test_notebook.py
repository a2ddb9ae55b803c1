"""docs/example.ipynb runs top to bottom in a real Jupyter kernel (nbclient),
and its rich outputs are the ones the docs promise."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "example.ipynb"


def test_example_notebook_runs_and_shows_html_tables() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    # Config, ConnectorReport, SendResult and BulkResult render as HTML
    assert any("********" in h for h in html)                      # the password, masked
    assert any("accept_any_sender" in h for h in html)
    assert any("sent to every recipient" in h for h in html)
    assert any("500 of 500 messages sent" in h for h in html)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "Add-ADPermission" in text and "ms-Exch-SMTP-Accept-Any-Sender" in text
    assert "MAIL 550 5.7.1" in text


def test_the_docs_site_executes_the_notebook() -> None:
    """mkdocs-jupyter runs the notebook at build time (against the emulator it
    starts), so the site shows its tables, results and progress bar, never
    empty `In [ ]:` cells; the committed notebook keeps no outputs to go stale."""
    mkdocs = (NOTEBOOK.parent.parent / "mkdocs.yml").read_text()
    plugin = mkdocs[mkdocs.index("- mkdocs-jupyter:"):].split("\n  - ")[0]
    assert "execute: true" in plugin and "allow_errors: false" in plugin
    assert "include_requirejs: true" in plugin       # the tqdm bar is a widget: it needs RequireJS
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
