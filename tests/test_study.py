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
)
from nas_asc.study.storage import parse_storage_url, safe_url, scrub, sqlite_path

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
        # in the query string, alone or among other parameters, any case
        (
            "postgresql://ann@127.0.0.1:1/nas?password=hunter2",
            "postgresql://ann@127.0.0.1:1/nas?password=***",
        ),
        (
            "postgresql:///nas?host=127.0.0.1&Password=hunter2&sslmode=disable",
            "postgresql:///nas?host=127.0.0.1&Password=***&sslmode=disable",
        ),
        # an unencoded '@' (and ':') in the password: masked to the last '@'
        ("postgresql://ann:h@unter2@db/nas", "postgresql://ann:***@db/nas"),
        ("postgresql://ann:hu:nter2@db/nas", "postgresql://ann:***@db/nas"),
        # a libpq key/value DSN, plain and quoted
        ("host=db password=hunter2 dbname=nas", "host=db password=*** dbname=nas"),
        ("host=db password='hun ter2' dbname=nas", "host=db password=*** dbname=nas"),
    ],
)
def test_safe_url_masks_the_password_also_of_urls_sqlalchemy_refuses(url, shown):
    assert safe_url(url) == shown
    # scrub hides this URL's password and no other word ('h@unter2' is not 'hunter2')
    hidden = "***" if f":{SECRET}@" in url or f"={SECRET}" in url else SECRET
    line = scrub(f"could not connect to {url} (password {SECRET})", url)
    assert line == f"could not connect to {shown} (password {hidden})"


def test_a_short_password_is_masked_in_its_url_not_in_every_word():
    # 'p' as the password: its URL form is masked, the letter p elsewhere is left alone
    url = "postgresql://ann:p@db/nas"
    assert scrub(f"cannot open study storage {url}: please check", url) == (
        "cannot open study storage postgresql://ann:***@db/nas: please check"
    )


def test_masking_covers_encoded_and_plain_forms_of_a_known_password():
    url = "postgresql://ann:h%40nter2x@db/nas"  # the password is h@nter2x
    assert scrub("auth failed for h@nter2x and h%40nter2x", url) == "auth failed for *** and ***"


def test_a_password_with_an_unencoded_at_is_refused_in_one_masked_line():
    with pytest.raises(NasAscError) as err:
        parse_storage_url("postgresql://ann:h@unter2@127.0.0.1/nas")
    message = str(err.value)
    assert "unter2" not in message and "\n" not in message
    assert message.startswith("--storage postgresql://ann:***@127.0.0.1/nas: the password")
    assert "percent-encode" in message


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
    "postgresql://ann@127.0.0.1:1/nas?password=hunter2",  # the password in the query string
    "postgresql:///nas?host=127.0.0.1&port=1&password=hunter2",  # host and password as parameters
    "host=127.0.0.1 port=1 password=hunter2 dbname=nas",  # a libpq key/value DSN
    "postgresql://ann:hun@ter2@127.0.0.1:1/nas",  # an unencoded '@' in the password
]
COMMANDS = [
    ["report", "--study", "s"],
    ["export", "--study", "s", "--out", "exported"],
    ["dashboard", "--study", "s", "--port", "8799"],
    ["evaluate", "--study", "s"],
    ["search", "--space", "tfsepnet", "--study", "s"],
    ["finetune", "--study", "s"],
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
    assert SECRET not in out + err and "ter2" not in out + err
    assert "***" in out + err  # the URL is shown, masked
    if not debug:
        assert err.startswith("nas-asc: error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_masked_output_covers_prints_logging_warnings_and_tracebacks(capsys):
    import logging
    import sys
    import traceback
    import warnings

    from nas_asc.redact import masked_output

    logger = logging.getLogger("nas_asc.test_masked_output")
    handler = logging.StreamHandler(sys.stderr)  # bound to the stream before the block
    logger.addHandler(handler)
    try:
        with masked_output(["hunter2"]):
            print("study: postgresql://ann@db/nas?password=hunter2")
            logger.warning("driver said: bad password hunter2")
            # what warnings.showwarning writes (pytest records warnings instead of printing)
            sys.stderr.write(
                warnings.formatwarning("dsn host=db password=hunter2", UserWarning, "f", 1)
            )
            try:
                raise RuntimeError("connect postgresql://ann:hunter2@db/nas")
            except RuntimeError as exc:
                traceback.print_exception(exc)
        print("after: hunter2")  # outside the block: the streams are the caller's again
    finally:
        logger.removeHandler(handler)
    out, err = capsys.readouterr()
    assert "password=***" in out and "bad password ***" in err and "ann:***@db" in err
    assert "host=db password=***" in err
    assert out.count("hunter2") == 1 and out.endswith("after: hunter2\n")
    assert "hunter2" not in err
    assert handler.stream is sys.stderr


def test_the_recorded_budget_is_read_one_way():
    import optuna

    from nas_asc.budget import parse_budget
    from nas_asc.study.record import recorded_budget, require_budget

    study = optuna.create_study(study_name="foreign")
    assert recorded_budget(study) is None
    with pytest.raises(NasAscError) as err:
        require_budget(study)
    assert str(err.value) == ("study 'foreign' records no budget; it was not run by nas-asc search")
    study.set_user_attr("budget", {"name": "x", "max_macs": "many"})  # not a budget
    assert recorded_budget(study) is None
    budget = parse_budget("dcase2024,ram=64k")
    study.set_user_attr("budget", budget.to_dict())
    assert require_budget(study) == budget
