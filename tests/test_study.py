"""The study layer: storage URLs parsed once, shown masked by every command, studies opened alike.

Passwords are never printed: every command that names a storage is run through the real CLI with
URLs whose password must not appear (a server that refuses the connection, a port SQLAlchemy
cannot parse, an SQLite URL carrying credentials), with and without ``NAS_ASC_DEBUG``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nas_asc.cli import main
from nas_asc.errors import NasAscError
from nas_asc.search.study import (
    absolute_storage,
    default_storage,
    parse_storage_url,
    safe_url,
    scrub,
    sqlite_path,
)

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://ann:hunter2@db.example:5432/nas",
            "postgresql://ann:***@db.example:5432/nas",
        ),
        ("postgresql+psycopg://ann:hunter2@db/nas", "postgresql+psycopg://ann:***@db/nas"),
        ("postgresql://ann:hunter2@db:port/nas", "postgresql://ann:***@db:port/nas"),
        ("sqlite://ann:hunter2@/x.db", "sqlite://ann:***@/x.db"),
        ("mysql://ann@db/nas", "mysql://ann@db/nas"),
        ("sqlite:///studies/a.db", "sqlite:///studies/a.db"),
    ],
)
def test_safe_url_masks_the_password_also_of_urls_sqlalchemy_refuses(url, shown):
    assert safe_url(url) == shown
    hidden = "***" if SECRET in url else SECRET  # scrub hides this URL's password, no other
    assert scrub(f"could not connect to {url} (password {SECRET})", url) == (
        f"could not connect to {shown} (password {hidden})"
    )


def test_a_url_that_is_not_one_is_one_masked_line():
    with pytest.raises(NasAscError) as err:
        parse_storage_url("postgresql://ann:hunter2@db:port/nas")
    message = str(err.value)
    assert SECRET not in message and "\n" not in message
    assert message.startswith("--storage postgresql://ann:***@db:port/nas is not a database URL")


def test_sqlite_paths_are_read_by_sqlalchemy():
    assert sqlite_path("sqlite:///studies/a.db") == Path("studies/a.db")
    assert sqlite_path("sqlite:////abs/a.db") == Path("/abs/a.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("postgresql://u@h/db") is None
    assert default_storage("s") == "sqlite:///studies/s.db"
    assert (
        absolute_storage("sqlite:///studies/a.db") == f"sqlite:///{Path('studies/a.db').resolve()}"
    )
    assert absolute_storage("postgresql://u:p@h/db") == "postgresql://u:p@h/db"


URLS = [
    "postgresql://ann:hunter2@127.0.0.1:1/nas",  # nobody listens: the connection is refused
    "postgresql://ann:hunter2@127.0.0.1:99999/nas",  # a port out of range
    "postgresql://ann:hunter2@127.0.0.1:port/nas",  # a port SQLAlchemy cannot parse
    "sqlite://ann:hunter2@/missing.db",  # SQLite with credentials
]
COMMANDS = [
    ["report", "--study", "s"],
    ["export", "--study", "s", "--out", "exported"],
    ["dashboard", "--study", "s", "--port", "8799"],
    ["evaluate", "--study", "s"],
    ["search", "--space", "tfsepnet", "--study", "s"],
]


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "NAS_ASC_DEBUG"])
@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_no_command_prints_a_storage_password(command, url, debug, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if debug:
        monkeypatch.setenv("NAS_ASC_DEBUG", "1")
    else:
        monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    code = main([*command, "--storage", url])
    out, err = capsys.readouterr()
    assert code in (1, 2), (out, err)
    assert SECRET not in out + err
    if not debug:
        assert err.startswith("nas-asc: error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written
