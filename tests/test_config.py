"""load_config: TOML < environment < keywords; errors name key, value and fix."""
from __future__ import annotations

import logging
import os
import pickle

import pytest

import mailexpress as mx
from mailexpress.config import FIELDS

TOML = """
host = "mail.corp.example"
security = "starttls"
username = "CORP\\\\svc-mailer"
password_env = "MAIL_PW"
from_address = "noreply@corp.example"
reply_to_address = "helpdesk@corp.example"
server_family = "exchange2016"
connector_name = "EX01\\\\Client Frontend EX01"

[timeouts]
connect = 5
mail = 60
"""


@pytest.fixture
def toml_file(tmp_path):
    p = tmp_path / "mailexpress.toml"
    p.write_text(TOML)
    return p


def test_file_with_password_from_environment(toml_file, monkeypatch):
    monkeypatch.setenv("MAIL_PW", "os-environ-is-not-read-when-env-is-given")
    cfg = mx.load_config(toml_file, env={"MAIL_PW": "pw-from-env"})
    assert cfg.host == "mail.corp.example" and cfg.port == 587 and cfg.security == "starttls"
    assert cfg.username == "CORP\\svc-mailer" and cfg.password.reveal() == "pw-from-env"
    assert cfg.timeouts == {"connect": 5.0, "mail": 60.0}
    assert cfg.sources["host"].startswith("file:") and cfg.sources["port"] == "default"


def test_environment_overrides_file_and_keywords_override_both(toml_file, monkeypatch):
    monkeypatch.setenv("MAIL_PW", "x")
    env = {"MAILEXPRESS_HOST": "env.example", "MAILEXPRESS_PORT": "2525",
           "MAILEXPRESS_TIMEOUT_MAIL": "30", "MAILEXPRESS_VERIFY": "no", "MAIL_PW": "x"}
    cfg = mx.load_config(toml_file, env=env, port=465, security="ssl")
    assert cfg.host == "env.example" and cfg.port == 465 and cfg.security == "ssl" and cfg.verify is False
    assert cfg.timeouts == {"connect": 5.0, "mail": 30.0}
    assert cfg.sources["host"] == "env:MAILEXPRESS_HOST" and cfg.sources["port"] == "argument"


def test_issue_example_password_env_keyword(toml_file, monkeypatch):
    monkeypatch.setenv("MAIL_PW", "kw-secret")
    monkeypatch.delenv("MAILEXPRESS_HOST", raising=False)
    cfg = mx.load_config(toml_file, password_env="MAIL_PW")
    assert cfg.password.reveal() == "kw-secret"


def test_a_later_password_source_replaces_earlier_ones(toml_file, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from-file\nsecond line ignored\n")
    cfg = mx.load_config(toml_file, env={}, password_file=str(pw))
    assert cfg.password.reveal() == "from-file" and cfg.password_env is None
    cfg2 = mx.load_config(toml_file, env={"MAILEXPRESS_PASSWORD": "from-env-var"})
    assert cfg2.password.reveal() == "from-env-var"


def test_mailexpress_config_names_the_file(toml_file):
    cfg = mx.load_config(env={"MAILEXPRESS_CONFIG": str(toml_file), "MAIL_PW": "x", "MAILEXPRESS_PASSWORD": "y"})
    assert cfg.host == "mail.corp.example"


def test_implicit_tls_defaults_to_465():
    assert mx.load_config(env={}, host="h", security="ssl", use_auth=False).port == 465
    assert mx.load_config(env={}, host="h", security="NONE", use_auth=False).port == 25


@pytest.mark.parametrize("kwargs, key, words", [
    ({"prot": 25}, "prot", "did you mean 'port'"),
    ({"port": 70000}, "port", "between 1 and 65535"),
    ({"port": "25"}, "port", "whole number"),
    ({"security": "tls"}, "security", "'starttls', 'ssl', 'none'"),
    ({"use_auth": "maybe"}, "use_auth", "true or false"),
    ({"min_tls_version": "1.1"}, "min_tls_version", "'1.2', '1.3'"),
    ({"timeouts": {"mial": 3}}, "timeouts.mial", "did you mean 'mail'"),
    ({"timeouts": {"mail": 0}}, "timeouts.mail", "between 0 and 604800"),
    ({"from_address": "not an address"}, "from_address", "e-mail address"),
    ({"from_address": "a@b\r\nBcc: x"}, "from_address", "control characters"),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "no such file"),
    ({"auth_mechanisms": ["CRAM-MD5"]}, "auth_mechanisms", "'XOAUTH2', 'OAUTHBEARER', 'GSSAPI', 'NTLM', 'LOGIN', 'PLAIN'"),
    ({"server_family": "exchange2099"}, "server_family", "allowed"),
    ({"host": "bad host"}, "host", "no spaces"),
])
def test_bad_values_name_key_value_and_fix(kwargs, key, words):
    base = {"host": "h", "use_auth": False}
    base.update(kwargs)
    with pytest.raises(mx.ConfigError) as info:
        mx.load_config(env={}, **base)
    exc = info.value
    assert exc.key == key and words in str(exc) and "(from argument)" in str(exc)
    assert isinstance(exc, ValueError)


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('host = "h"\nusername = "u"\npasword = "x"\n')
    with pytest.raises(mx.ConfigError, match=r"pasword .*from file:.*did you mean 'password'"):
        mx.load_config(p, env={})


def test_the_variable_password_env_names_is_not_a_stray_setting():
    cfg = mx.load_config(env={"MAILEXPRESS_SMTP_PW": "pw-1"}, host="h", username="u", password_env="MAILEXPRESS_SMTP_PW")
    assert cfg.password.reveal() == "pw-1"
    with pytest.raises(mx.ConfigError, match="MAILEXPRESS_SMTP_PW"):
        mx.load_config(env={"MAILEXPRESS_SMTP_PW": "pw-1"}, host="h", use_auth=False)


def test_build_switches_are_not_config():
    assert mx.load_config(env={"MAILEXPRESS_BUILD_STRICT": "1"}, host="h", use_auth=False).host == "h"


def test_unknown_environment_variable_is_an_error():
    with pytest.raises(mx.ConfigError, match="MAILEXPRESS_HOSTNAME"):
        mx.load_config(env={"MAILEXPRESS_HOSTNAME": "h"}, host="h")


def test_missing_password_says_how_to_give_one():
    with pytest.raises(mx.ConfigError, match="password_env") as info:
        mx.load_config(env={}, host="h", username="u")
    assert info.value.key == "password"


def test_missing_password_env_variable_is_named():
    with pytest.raises(mx.ConfigError, match="NOPE_PW is not set"):
        mx.load_config(env={}, host="h", username="u", password_env="NOPE_PW")


def test_missing_host():
    with pytest.raises(mx.ConfigError, match="host is not set"):
        mx.load_config(env={})


def test_invalid_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("host = \n")
    with pytest.raises(mx.ConfigError, match="not valid TOML"):
        mx.load_config(p, env={})


def test_password_never_shows(caplog):
    caplog.set_level(logging.DEBUG)
    cfg = mx.load_config(env={}, host="h", username="u", password="hunter2-secret")
    text = " ".join([repr(cfg), str(cfg), repr(cfg.password), str(cfg.to_dict()), repr(cfg.replace(port=2525))])
    assert "hunter2-secret" not in text and "********" in text
    with pytest.raises(TypeError):
        pickle.dumps(cfg.password)
    with pytest.raises(mx.ConfigError) as info:
        mx.load_config(env={}, host="h", username="u", password=12345)
    assert "12345" not in str(info.value)
    logging.getLogger("mailexpress").debug("config %r", cfg)
    assert "hunter2-secret" not in caplog.text
    assert cfg.to_dict(show_password=True)["password"] == "hunter2-secret"


def test_replace_validates_again():
    cfg = mx.load_config(env={}, host="h", use_auth=False)
    assert cfg.replace(port=2525).port == 2525
    with pytest.raises(mx.ConfigError):
        cfg.replace(port=0)
    with pytest.raises(mx.ConfigError, match="did you mean"):
        cfg.replace(hots="x")


def test_toml_under_a_mailexpress_table(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[mailexpress]\nhost = "h"\nuse_auth = false\n')
    assert mx.load_config(p, env={}).host == "h"


def test_every_field_has_documentation():
    for f in FIELDS:
        assert f.doc.endswith(".") and len(f.doc) > 20, f.name


def test_session_kwargs_allow_helo_only_without_tls_and_auth():
    assert mx.load_config(env={}, host="h", security="none", use_auth=False).session_kwargs()["helo_fallback"]
    assert not mx.load_config(env={}, host="h", use_auth=False).session_kwargs()["helo_fallback"]


# -- OAuth and the other mechanisms (issue 11) -------------------------------------

OAUTH = {"oauth_tenant": "11111111-2222-3333-4444-555555555555",
         "oauth_client_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"}


def test_oauth_needs_no_password_and_reads_the_secret_from_the_environment():
    cfg = mx.load_config(env={"APP_SECRET": "s3cr3t-value"}, host="smtp.office365.com",
                         username="sender@corp.example", oauth_client_secret_env="APP_SECRET", **OAUTH)
    assert cfg.password is None and cfg.oauth_client_secret is not None
    assert cfg.oauth_client_secret.reveal() == "s3cr3t-value" and cfg.has_token_source
    assert cfg.sources["oauth_client_secret"] == "env:APP_SECRET"
    assert cfg.oauth_scope == "https://outlook.office365.com/.default" and cfg.auth_mechanisms == ["automatic"]
    for text in (repr(cfg), str(cfg.to_dict()), cfg._repr_html_()):
        assert "s3cr3t-value" not in text
    assert cfg.to_dict()["oauth_client_secret"] == "********"


@pytest.mark.parametrize("kwargs, key, words", [
    ({"oauth_client_id": OAUTH["oauth_client_id"], "oauth_client_secret": "x"}, "oauth_tenant",
     "oauth_client_id is set, so the tenant is needed"),
    ({"oauth_tenant": OAUTH["oauth_tenant"]}, "oauth_client_id", "Application (client) ID"),
    ({**OAUTH}, "oauth_client_secret_env", "needs a credential"),
    ({"oauth_client_secret": "x"}, "oauth_client_secret", "set oauth_tenant and oauth_client_id too"),
    ({**OAUTH, "oauth_tenant": "a/b"}, "oauth_tenant", "a GUID"),
    ({**OAUTH, "oauth_client_secret": "x", "oauth_authority": "http://login.example"}, "oauth_authority", "https://"),
    ({"password": "pw", "auth_mechanisms": ["XOAUTH2"]}, "auth_mechanisms", "need a token"),
    ({"token_provider": lambda: "t", "auth_mechanisms": ["LOGIN"], "password": "pw"}, "auth_mechanisms",
     "neither XOAUTH2 nor OAUTHBEARER"),
    ({"token_provider": "not-callable"}, "token_provider", "get_token(scope)"),
    ({"auth_mechanisms": ["automatic", "LOGIN"], "password": "pw"}, "auth_mechanisms", "stands alone"),
    ({"auth_mechanisms": [], "password": "pw"}, "auth_mechanisms", "allows nothing"),
    ({"auth_mechanisms": ["NTLMv2"], "password": "pw"}, "auth_mechanisms", "did you mean 'NTLM'"),
])
def test_oauth_and_mechanism_partners(kwargs, key, words):
    with pytest.raises(mx.ConfigError) as info:
        mx.load_config(env={}, host="h", username="sender@corp.example", **kwargs)
    assert info.value.key == key and words in str(info.value), str(info.value)


def test_secret_and_certificate_both_given(tmp_path):
    cert = tmp_path / "app.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                    "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    with pytest.raises(mx.ConfigError) as info:
        mx.load_config(env={"S": "x"}, host="h", username="u@corp.example", oauth_client_secret_env="S",
                       oauth_certificate_file=str(cert), **OAUTH)
    assert info.value.key == "oauth_certificate_file" and "not both" in str(info.value)
    assert "x" != info.value.value


def test_certificate_without_its_key_names_where_it_was_looked_for(tmp_path):
    cert = tmp_path / "app.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    with pytest.raises(mx.ConfigError, match=r"neither inside the file nor beside it \(.*app\.key\)"):
        mx.load_config(env={}, host="h", username="u@corp.example", oauth_certificate_file=str(cert), **OAUTH)
    (tmp_path / "app.key").write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    cfg = mx.load_config(env={}, host="h", username="u@corp.example", oauth_certificate_file=str(cert), **OAUTH)
    assert cfg.oauth_certificate_file == str(cert)


def test_inline_secret_in_a_world_readable_file_is_refused(tmp_path):
    path = tmp_path / "mx.toml"
    path.write_text('host = "smtp.office365.com"\nusername = "sender@corp.example"\n'
                    f'oauth_tenant = "{OAUTH["oauth_tenant"]}"\noauth_client_id = "{OAUTH["oauth_client_id"]}"\n'
                    'oauth_client_secret = "inline-secret-42"\n')
    os.chmod(path, 0o644)
    with pytest.raises(mx.ConfigError) as info:
        mx.load_config(path, env={})
    text = str(info.value)
    assert info.value.key == "oauth_client_secret" and f"chmod 600 {path}" in text
    assert "inline-secret-42" not in text and "oauth_client_secret_env" in text
    os.chmod(path, 0o600)
    cfg = mx.load_config(path, env={})
    assert cfg.oauth_client_secret is not None and cfg.oauth_client_secret.reveal() == "inline-secret-42"


def test_token_provider_is_keyword_only(tmp_path):
    path = tmp_path / "mx.toml"
    path.write_text('host = "h"\ntoken_provider = "mymodule.get"\n')
    with pytest.raises(mx.ConfigError, match="token_provider is a Python object"):
        mx.load_config(path, env={})
    with pytest.raises(mx.ConfigError, match="token_provider is a Python object"):
        mx.load_config(env={"MAILEXPRESS_TOKEN_PROVIDER": "x"}, host="h", use_auth=False)


def test_token_provider_config_shows_no_token():
    def provider() -> str:
        return "the-token-itself"
    cfg = mx.load_config(env={}, host="h", username="sender@corp.example", token_provider=provider)
    assert cfg.password is None and "provider" in repr(cfg) and "the-token-itself" not in repr(cfg)
    assert "provider" in str(cfg.to_dict()["token_provider"])
    # the session's allowed set: every mechanism; mailexpress.auth picks the order
    assert cfg.session_kwargs()["auth_mechanisms"] is None
    pinned = cfg.replace(auth_mechanisms=["xoauth2"])
    assert pinned.auth_mechanisms == ["XOAUTH2"] and pinned.session_kwargs()["auth_mechanisms"] == ("XOAUTH2",)


def test_a_later_client_secret_source_replaces_earlier_ones(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    cfg = mx.load_config(env={"S": "from-env"}, host="h", username="u@corp.example",
                         oauth_client_secret_env="S", **OAUTH)
    again = cfg.replace(oauth_client_secret_file=str(secret_file))
    assert again.oauth_client_secret is not None and again.oauth_client_secret.reveal() == "from-file"
    assert again.oauth_client_secret_env is None


def test_config_show_masks_the_client_secret(tmp_path, capsys, monkeypatch):
    from mailexpress.cli import main
    for k in list(os.environ):
        if k.startswith("MAILEXPRESS_"):
            monkeypatch.delenv(k)
    path = tmp_path / "mx.toml"
    path.write_text('host = "smtp.office365.com"\nusername = "sender@corp.example"\n'
                    f'oauth_tenant = "{OAUTH["oauth_tenant"]}"\noauth_client_id = "{OAUTH["oauth_client_id"]}"\n'
                    'oauth_client_secret = "inline-secret-77"\n')
    os.chmod(path, 0o600)
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inline-secret-77" not in out and "oauth_client_secret" in out and "'********'" in out
    assert main(["config", "show", "--config", str(path), "--json"]) == 0
    data = __import__("json").loads(capsys.readouterr().out)
    assert data["settings"]["oauth_client_secret"] == "********"
    assert data["settings"]["oauth_tenant"] == OAUTH["oauth_tenant"]


def test_config_init_template_has_the_oauth_keys(tmp_path):
    from mailexpress.config import template
    text = template()
    for key in ("oauth_tenant", "oauth_client_id", "oauth_client_secret_env", "oauth_certificate_file",
                "oauth_scope", "oauth_authority", "kerberos_service", "token_provider"):
        assert key in text
    # the template, written and filled in as its comments say, loads
    path = tmp_path / "mx.toml"
    path.write_text(text.replace('# oauth_tenant = ', 'oauth_tenant = ')
                    .replace('# oauth_client_id = ', 'oauth_client_id = ')
                    .replace('# oauth_client_secret_env = ', 'oauth_client_secret_env = ')
                    .replace('password_env = "SVC_MAILER_PASSWORD"', '# password_env'))
    cfg = mx.load_config(path, env={"MAILER_CLIENT_SECRET": "from-env"})
    assert cfg.has_token_source and cfg.password is None
