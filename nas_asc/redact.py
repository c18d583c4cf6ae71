"""Secrets never reach the screen: every form a database password can take is masked as ``***``.

A storage URL can carry its password in four ways, and each is masked wherever it appears in a
text, whether or not the URL parses:

* in the user part, ``postgresql://ann:PASSWORD@host/db``, also unencoded, with ``@``, ``:`` or
  ``/`` in it (everything from the user's ``:`` to the last ``@`` of the authority is masked);
* in the query string, ``postgresql://ann@host/db?password=PASSWORD`` (also ``passwd``, ``pwd``,
  ``sslpassword``, any case), up to the next ``&``;
* in a libpq key/value DSN, ``host=h password=PASSWORD dbname=d`` (quoted values too);
* as the bare password of a storage the command was given (:func:`mask_secrets`'s ``known``),
  wherever a driver or library quotes it (passwords of 4 characters and more: a shorter one is
  too likely to be part of an unrelated word, and its URL forms are masked by pattern).

:func:`masked_output` routes ``sys.stdout``, ``sys.stderr`` and the logging handlers that write to
them through :func:`mask_secrets`, so the CLI's messages, the Reporter, logging, warnings and
tracebacks pass one mask: the one place the CLI's text is made safe.

Example:
    >>> mask_secrets("postgresql://ann:s3cret@db/nas?sslmode=require")
    'postgresql://ann:***@db/nas?sslmode=require'
    >>> mask_secrets("postgresql://ann@db/nas?password=s3cret&sslmode=require")
    'postgresql://ann@db/nas?password=***&sslmode=require'
    >>> mask_secrets("host=db password='s 3' dbname=nas")
    'host=db password=*** dbname=nas'
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from urllib.parse import quote, unquote

__all__ = ["MASK", "mask_secrets", "url_password", "masked_output", "MaskingStream"]

MASK = "***"

# scheme://user:SECRET@host...: the secret runs (greedily) to the last '@' of the token that is
# followed by a host part without '@' (so an unencoded '@' in the password is masked too)
_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#]*:)(?P<secret>[^\s]*)(?=@[^\s@]*(?:\s|$))"
)
# ?password=SECRET / &passwd=SECRET in a URL's query: to the next '&', '#' or white space
_QUERY = re.compile(
    r"(?P<head>[?&;](?:ssl)?(?:password|passwd|pwd|pass)=)(?P<secret>[^&#\s'\"]*)", re.IGNORECASE
)
# password=SECRET in a libpq key/value DSN: a quoted value, or one to the next white space
_KEYVALUE = re.compile(
    r"(?P<head>(?:^|(?<=[\s,(\[{]))(?:ssl)?(?:password|passwd|pwd)\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s,)\]}]+)",
    re.IGNORECASE,
)

_MIN_KNOWN = 4  # shorter known passwords are masked only in their URL or DSN forms


def _sub(pattern: re.Pattern, text: str) -> str:
    return pattern.sub(lambda m: m.group("head") + MASK, text)


def mask_secrets(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every password in a URL, a URL's query or a key/value DSN shown as ``***``,
    and each of the ``known`` passwords (plain and percent-encoded) masked wherever it appears."""
    text = str(text)
    if "://" in text:
        text = _sub(_USERINFO, text)
    if "=" in text:
        text = _sub(_QUERY, text)
        text = _sub(_KEYVALUE, text)
    for secret in known:
        if secret and len(secret) >= _MIN_KNOWN and secret != MASK:
            for form in {secret, quote(secret, safe=""), unquote(secret)}:
                if len(form) >= _MIN_KNOWN:
                    text = text.replace(form, MASK)
    return text


def url_password(url: str | None) -> str | None:
    """The password a storage URL or DSN carries in any of the masked forms (None if none), read
    by the same patterns that mask it, so what is masked and what is known agree."""
    if not url:
        return None
    text = str(url)
    for pattern in (_USERINFO, _QUERY, _KEYVALUE):
        match = pattern.search(text)
        if match and match.group("secret"):
            secret = match.group("secret").strip("'\"")
            return unquote(secret) if pattern is not _KEYVALUE else secret
    return None


class MaskingStream:
    """A text stream that masks secrets in everything written to it (:func:`mask_secrets`); the
    rest (``isatty``, ``fileno``, ``encoding``, ``flush``) is the wrapped stream's."""

    def __init__(self, stream, known: Iterable[str] = ()):
        self._stream = stream
        self._known = tuple(k for k in known if k)

    def write(self, text: str) -> int:
        self._stream.write(mask_secrets(text, self._known))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    @property
    def wrapped(self):
        return self._stream

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def masked_output(known: Iterable[str | None] = ()) -> Iterator[None]:
    """Inside the block, ``sys.stdout``, ``sys.stderr`` and every logging handler that writes to
    them mask secrets (and the ``known`` passwords) in all they print; restored after."""
    secrets = tuple(s for s in known if s)
    saved = sys.stdout, sys.stderr
    out, err = MaskingStream(saved[0], secrets), MaskingStream(saved[1], secrets)
    swapped: list[tuple[logging.StreamHandler, object]] = []
    for handler in _stream_handlers():
        if handler.stream is saved[0] or handler.stream is saved[1]:
            swapped.append((handler, handler.stream))
            handler.setStream(out if handler.stream is saved[0] else err)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        if sys.stdout is out:
            sys.stdout = saved[0]
        if sys.stderr is err:
            sys.stderr = saved[1]
        for handler, stream in swapped:
            handler.setStream(stream)


def _stream_handlers() -> Iterator[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                yield handler
