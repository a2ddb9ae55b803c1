"""Every Python example of the docs runs, against the connector emulator set
up as the docs describe (a mailexpress.toml, the password in an environment
variable).  Pages whose examples are pytest tests run through pytest with
the plugin, --mailexpress-config included.  (Their types: docs/examples.py
--mypy, in .ci/run.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# msal and requests are loaded once, here: pytester's in-process runs unload the
# modules they import, and a later MSAL call would then mix two copies of requests
# ("You can only merge into CookieJar")
import msal  # noqa: F401
import pytest
import requests  # noqa: F401

import mailexpress as mx
from mailexpress.testing import ConnectorEmulator, User

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import examples  # noqa: E402

PASSWORD = "Docs-Passw0rd!"
PAGES = [p for p in examples.pages() if examples.script(p)]


@pytest.fixture
def docs_connector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The set-up the docs assume: mailexpress.toml in the working directory."""
    user = User("CORP\\svc-mailer", PASSWORD, "noreply@corp.example", rights="authoritative_domain")
    with ConnectorEmulator(users=[user]) as em:
        toml = tmp_path / "mailexpress.toml"
        toml.write_text(
            f'host = "127.0.0.1"\nport = {em.port}\nsecurity = "starttls"\nca_file = "{em.ca_file}"\n'
            'use_auth = true\nusername = "CORP\\\\svc-mailer"\npassword_env = "SVC_MAILER_PASSWORD"\n'
            'from_address = "noreply@corp.example"\nreply_to_address = "helpdesk@corp.example"\n'
            'server_family = "exchange2016"\nconnector_name = "EX01\\\\Client Frontend EX01"\n'
            'service_account = "CORP\\\\svc-mailer"\n')
        monkeypatch.setenv("SVC_MAILER_PASSWORD", PASSWORD)
        monkeypatch.chdir(tmp_path)
        yield toml


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page: Path, docs_connector: Path, pytester: pytest.Pytester,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    code = examples.script(page)
    assert code is not None
    tests = re.findall(r"^def (test_\w+)\(", code, re.M)
    if "settings.configure(" in code:
        # Django is configured once per process: such a page runs as a program of its own
        proc = subprocess.run([sys.executable, "-c", code], cwd=docs_connector.parent, capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.returncode == 0, proc.stderr
        return
    if not tests:
        monkeypatch.chdir(docs_connector.parent)      # pytester moved to a directory of its own
        namespace: dict[str, object] = {"__name__": examples.module_name(page)}
        exec(compile(code, str(page), "exec"), namespace)
        return
    pytester.chdir()
    (pytester.path / "mailexpress.toml").write_text(docs_connector.read_text())
    pytester.makepyfile(**{f"test_{examples.module_name(page)}": code})
    result = pytester.runpytest("-p", "no:cacheprovider", "--mailexpress-config", str(docs_connector))
    result.assert_outcomes(passed=len(tests))


def test_every_page_with_python_has_examples_that_run() -> None:
    """A ```python block left out with <!-- no-run --> must stay rare."""
    skipped = sum(p.read_text().count("<!-- no-run -->") for p in examples.pages())
    assert skipped <= 2
    assert {p.name for p in PAGES} >= {"README.md", "quickstart.md", "bulk.md", "testing.md",
                                       "ci-checks.md", "diagnosis.md", "asyncio.md", "logging.md",
                                       "django.md"}


def test_the_docs_connector_refuses_what_the_examples_expect(docs_connector: Path) -> None:
    """The quickstart's SenderRefused example must really be refused."""
    cfg = mx.load_config(docs_connector)
    with pytest.raises(mx.SenderRefused):
        mx.send_as(cfg, "ceo@elsewhere.example", to="bob@partner.example", body="hi")
