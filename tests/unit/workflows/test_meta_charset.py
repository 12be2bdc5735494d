"""The <meta> charset prescan (WHATWG HTML "prescan a byte stream to determine its encoding")."""

from __future__ import annotations

import pytest

from workflows.meta_charset import meta_charset
from workflows.response_text import _body_codec, _known_codec


@pytest.mark.parametrize(
    ("head", "codec"),
    [
        (b'<html><head><meta charset="windows-1252"><title>x</title>', "cp1252"),
        (b"<META CHARSET=Windows-1252>", "cp1252"),
        (b"<meta/charset=koi8-r>", "koi8-r"),
        (b'<meta http-equiv="Content-Type" content="text/html; charset=shift_jis">', "shift_jis"),
        (b"<meta content='text/html; charset=\"euc-jp\"' http-equiv=content-type>", "euc_jp"),
        (b'<meta content="text/html; charset=shift_jis">', None),  # content without the http-equiv pragma
        (b'<!-- <meta charset="cp1252"> --><p>', None),  # in a comment
        (b'<!--><meta charset="cp1252">', "cp1252"),  # `<!-->` is a whole comment
        (b'<div title="<meta charset=cp1252>"><meta charset=koi8-r>', "koi8-r"),  # in another tag's attribute
        (b'<meta charset="punycode"><meta charset="cp1251">', "cp1251"),  # not a text codec: passed over
        (b'<meta charset="utf-32"><meta charset="cp1251">', "cp1251"),
        (b'<meta charset="utf-16le">', "utf-8"),  # a page that could be scanned as ASCII is no UTF-16
        (b"<meta charset=cp1252 charset=koi8-r>", "cp1252"),  # the first of an attribute counts
        (b'<meta charset="a\x00b">', None),
        (b"<meta charset=", None),  # cut off
        (b"<!-- never closed <meta charset=cp1252>", None),
        (b"x" * 1002 + b'<meta charset="cp1252">', None),  # ends past the 1024 bytes looked at
        (b"x" * 990 + b'<meta charset="cp1252">', "cp1252"),
    ],
)
def test_the_prescan_finds_the_charset_a_browser_would(head: bytes, codec: str | None) -> None:
    assert meta_charset(head, _known_codec) == codec


def test_a_bom_wins_over_the_header_and_the_header_over_the_meta_tag() -> None:
    page = b'<meta charset="cp1252">'
    assert _body_codec(b"\xef\xbb\xbf" + page, "shift_jis", "text/html") == ("utf-8", 3)
    assert _body_codec(b"\xff\xfe" + page, None, "text/html") == ("utf-16-le", 2)
    assert _body_codec(b"\xfe\xff" + page, "cp1252", "text/plain") == ("utf-16-be", 2)
    assert _body_codec(b"\xff\xfe\x00\x00a\x00\x00\x00", "utf-32", "text/plain") == ("utf-32", 0)
    assert _body_codec(page, "koi8-r", "text/html") == ("koi8-r", 0)
    assert _body_codec(page, "punycode", "text/html") == ("cp1252", 0)  # a header naming no text codec: as none
    assert _body_codec(page, None, "") == ("cp1252", 0)  # untyped: the reader reads it as HTML
    assert _body_codec(page, None, "text/plain") == ("utf-8", 0)
    assert _body_codec(page, None, "application/json") == ("utf-8", 0)


def test_latin1_and_ascii_labels_read_as_windows_1252_as_browsers_do() -> None:
    """WHATWG maps iso-8859-1 and ascii to windows-1252: a page that says either and holds its quotes and euro
    sign shows them, not C1 control characters (or replacement characters for ascii)."""
    body = b"\x93quoted\x94 \x80 5"
    for label in ("iso-8859-1", "latin1", "ISO_8859-1", "us-ascii", "ascii"):
        codec = _known_codec(label)
        assert codec is not None
        assert body.decode(codec, errors="replace") == "\u201cquoted\u201d \u20ac 5", label
