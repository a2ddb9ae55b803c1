"""The pytest plugin, exercised the way another project would use it (pytester)."""
from __future__ import annotations

import textwrap

# Imported here, before any in-process pytester run: pytester restores
# sys.modules after each run, and a library first imported inside one
# (pyspnego for NTLM, with cryptography's bindings) would be imported
# a second time by later tests.
import msal  # noqa: F401,E402
import spnego  # noqa: F401,E402


def test_fixture_gives_config_and_messages(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import mailexpress as mx

        def test_sends(exchange_connector):
            res = mx.send_as(exchange_connector.config, "alice@corp.example", to="bob@partner.example",
                             subject="hello", body="hi\\n")
            assert res.ok
            [msg] = exchange_connector.email_messages
            assert msg["Subject"] == "hello" and msg["From"] == "alice@corp.example"
            assert exchange_connector.messages[0].data.endswith(b"hi\\r\\n")
    """))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_marker_selects_a_preset_and_report_helpers_explain_failures(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import pytest
        import mailexpress as mx

        @pytest.mark.mailexpress_connector(preset="authoritative_only")
        def test_rights(exchange_connector):
            report = mx.test_connector(exchange_connector.config, senders=["ceo@partner.example"])
            report.assert_ok()
            report.assert_can_send_as("svc-mailer@corp.example")
            report.assert_can_send_as("ceo@partner.example")
    """))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*the account may not send as ceo@partner.example: refused_at_mail; server said: 550 5.7.1*",
        "*fix: Grant the account the right to send as external addresses: Add-ADPermission*"
        "ms-Exch-SMTP-Accept-Any-Sender*",
    ])


def test_factory_makes_several_connectors(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import mailexpress as mx
        from mailexpress.testing import User

        def test_two(exchange_connector_factory):
            good = exchange_connector_factory()
            bad = exchange_connector_factory("anonymous_allowed")
            custom = exchange_connector_factory(preset=None, users=[User("a", "pw", "a@corp.example")],
                                                auth_mechanisms=("PLAIN",))
            assert mx.test_connector(good.config).ok
            assert not mx.test_connector(bad.config).ok
            with mx.connect(custom.config) as s:
                assert s.auth_mechanisms[-1] == "PLAIN"
            assert len({good.emulator.port, bad.emulator.port, custom.emulator.port}) == 3
    """))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_live_tests_skip_with_a_reason_without_config(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import pytest

        @pytest.mark.mailexpress_live
        def test_live(mailexpress_config):
            raise AssertionError("must not run")

        def test_config_fixture_alone(mailexpress_config):
            raise AssertionError("must not run")
    """))
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*--mailexpress-config PATH*"])


def test_live_tests_run_against_a_configured_connector(pytester, emulator):
    cfg = emulator.config()
    toml = pytester.makefile(".toml", mailexpress=textwrap.dedent(f"""
        host = "127.0.0.1"
        port = {emulator.port}
        ca_file = "{emulator.ca_file}"
        username = "{cfg.username}"
        password = "{cfg.password.reveal()}"
        from_address = "{cfg.from_address}"
    """))
    pytester.makepyfile(textwrap.dedent("""
        import pytest
        import mailexpress as mx

        @pytest.mark.mailexpress_live
        def test_live(mailexpress_config):
            mx.test_connector(mailexpress_config).assert_ok()
    """))
    result = pytester.runpytest("-p", "no:cacheprovider", f"--mailexpress-config={toml}")
    result.assert_outcomes(passed=1)
    assert cfg.password.reveal() not in result.stdout.str()


def test_plugin_is_registered_by_the_entry_point(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "--help")
    result.stdout.fnmatch_lines(["*--mailexpress-config=PATH*"])


def test_oauth_fixtures_run_the_token_path_offline(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import pytest
        import mailexpress as mx

        def test_provider(exchange_online, exchange_online_token_provider):
            cfg = exchange_online.config.replace(token_provider=exchange_online_token_provider)
            for n in range(2):
                mx.send_as(cfg, exchange_online.mailbox, to="bob@partner.example", subject=f"m{n}", body="b")
            assert [m["Subject"] for m in exchange_online.email_messages] == ["m0", "m1"]
            assert exchange_online_token_provider.requests == 1          # cached between connections
            assert [a.mechanism for a in exchange_online.emulator.auth_log] == ["XOAUTH2", "XOAUTH2"]

        def test_plain_token(exchange_online, exchange_online_token):
            cfg = exchange_online.config.replace(token_provider=lambda: exchange_online_token)
            assert mx.send_as(cfg, exchange_online.mailbox, to="b@partner.example", subject="s", body="b").ok

        def test_login_is_refused_there(exchange_online):
            user = exchange_online.users[0]
            with pytest.raises(mx.AuthError, match="5.7.139"):
                mx.send_as(exchange_online.config.replace(token_provider=None, password=user.password),
                           exchange_online.mailbox, to="b@partner.example", subject="s", body="b")

        def test_wrong_audience(exchange_online):
            bad = exchange_online.issue_token(audience="https://graph.microsoft.com")
            with pytest.raises(mx.AuthError) as info:
                mx.send_as(exchange_online.config.replace(token_provider=lambda: bad), exchange_online.mailbox,
                           to="b@partner.example", subject="s", body="b")
            assert info.value.oauth_error == {"status": "401", "schemes": "bearer",
                                              "scope": "https://outlook.office365.com/.default"}
            assert exchange_online.messages == []

        def test_msal(exchange_online, monkeypatch):
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", exchange_online.emulator.ca_file)
            mx.test_connector(exchange_online.msal_config()).assert_ok()
    """))
    # a subprocess: an in-process run would drop msal, requests and cryptography from
    # sys.modules afterwards (pytester's snapshot) and break later tests that use them
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
