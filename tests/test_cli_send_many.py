"""mailexpress send-many: CSV and JSONL files against the emulator."""
from __future__ import annotations

import json

from support import SVC

from mailexpress.cli import main


def args(em, *rest):
    return ["send-many", "--host", "127.0.0.1", "--port", str(em.port), "--username", SVC.username,
            "--password-env", "SVC_PW", "--from", SVC.address, *rest]


def env(monkeypatch, em):
    monkeypatch.setenv("SVC_PW", SVC.password)
    monkeypatch.setenv("MAILEXPRESS_CA_FILE", em.ca_file)


def test_csv_with_attachments_and_a_refused_recipient(emulator_factory, tmp_path, capsys, monkeypatch):
    em = emulator_factory(unknown_recipients=["gone@partner.example"])
    env(monkeypatch, em)
    (tmp_path / "a.txt").write_text("attached")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,to,cc,subject,body,attachments\n"
                        f"1,bob@partner.example,carol@partner.example;dan@partner.example,one,hello,{tmp_path / 'a.txt'}\n"
                        '2,eve@partner.example,,"two, with a comma",hello,\n'
                        "3,gone@partner.example,,three,hello,\n")
    rc = main(args(em, str(csv_path), "--json"))
    out = capsys.readouterr()
    assert rc == 1, out.err
    doc = json.loads(out.out)
    assert doc["sent"] == 2 and doc["failed"] == 1, doc["outcomes"]
    assert doc["outcomes"][2]["error"] == "RecipientsRefused"
    first = em.messages[0]
    assert first.rcpt_tos == ["bob@partner.example", "carol@partner.example", "dan@partner.example"]
    assert [p.get_filename() for p in first.message.iter_attachments()] == ["a.txt"]
    assert em.messages[1].message["Subject"] == "two, with a comma"


def test_jsonl_with_a_journal_runs_once(emulator_factory, tmp_path, capsys, monkeypatch):
    em = emulator_factory()
    env(monkeypatch, em)
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"k{i}", "to": ["bob@partner.example"], "subject": f"s{i}",
                                          "body": "b"}) for i in range(4)) + "\n")
    journal = str(tmp_path / "run.sqlite")
    assert main(args(em, str(path), "--journal", journal, "--limits", "opensmtpd")) == 0
    assert "4 messages" in capsys.readouterr().out
    assert main(args(em, str(path), "--journal", journal, "--connections", "2")) == 0
    assert len(em.messages) == 4
    capsys.readouterr()
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"to": "bob@partner.example", "subject": f"m{i}"}) + "\n"
                            for i in range(250)))
    assert main(args(em, str(many), "--connections", "2", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sent"] == 250 and doc["connections"] == 2 and len(em.messages) == 254
    assert em.peak_connections == 2


def test_bad_files_exit_2_naming_the_field(emulator_factory, tmp_path, capsys, monkeypatch):
    em = emulator_factory()
    env(monkeypatch, em)
    bad = tmp_path / "m.csv"
    bad.write_text("to,subjcet\nbob@partner.example,x\n")
    assert main(args(em, str(bad))) == 2
    assert "subjcet" in capsys.readouterr().err and em.messages == []
    assert main(args(em, str(tmp_path / "missing.csv"))) == 2
    assert main(args(em, str(bad), "--limits", "exchange_onlin")) == 2
    assert "exchange_online" in capsys.readouterr().err


def test_a_repeated_id_is_reported_with_its_lines(emulator_factory, tmp_path, capsys, monkeypatch):
    em = emulator_factory()
    env(monkeypatch, em)
    path = tmp_path / "m.csv"
    path.write_text("id,to,subject,body\n"
                    "inv-1,bob@partner.example,one,hello\n"
                    "inv-2,bob@partner.example,two,hello\n"
                    '"inv-1",bob@partner.example,"one, again",hello\n'
                    "inv-3,bob@partner.example,three,hello\n")
    journal = str(tmp_path / "run.sqlite")
    assert main(args(em, str(path), "--journal", journal)) == 1
    out = capsys.readouterr().out
    assert "1 message(s) not sent: an earlier line has the same id" in out
    assert "line 4 (id 'inv-1', as line 2)" in out and "DuplicateMessage" in out
    assert [m.message["Subject"] for m in em.messages] == ["one", "two", "three"]
    assert main(args(em, str(path), "--journal", journal, "--json")) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["duplicates"] == [{"index": 2, "line": 4, "id": "inv-1", "first_index": 0, "first_line": 2}]
    assert doc["outcomes"][2]["error"] == "DuplicateMessage" and doc["sent"] == 3
    assert len(em.messages) == 3
