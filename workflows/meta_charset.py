"""The charset an HTML page names in a `<meta>` tag, found as browsers find it.

WHATWG HTML, "prescan a byte stream to determine its encoding": only the first
1024 bytes are looked at; comments, other tags' attributes and `<!...>`, `</...>`,
`<?...>` constructs are skipped, so a `<meta>` quoted in an attribute or a comment
does not count. Both forms are read: `<meta charset="...">` and
`<meta http-equiv="Content-Type" content="text/html; charset=...">`. A label
`resolve` does not accept is passed over and the scan goes on, as the standard says.
(The XML-declaration fallback of the standard is not done.)
"""

from __future__ import annotations

from collections.abc import Callable

PRESCAN_BYTES = 1024
_SPACE = b"\t\n\x0c\r "
_SPACE_OR_SLASH = _SPACE + b"/"
_UTF16 = frozenset({"utf-16", "utf-16-le", "utf-16-be"})
_UTF32 = frozenset({"utf-32", "utf-32-le", "utf-32-be"})  # no label of the standard: passed over


def meta_charset(data: bytes, resolve: Callable[[str], str | None]) -> str | None:
    """The codec `resolve` gives for the first usable meta charset in `data`'s first 1024 bytes, or None.

    A UTF-16 label in a meta tag means UTF-8 (the tag could not have been read as ASCII otherwise); a UTF-32
    one is passed over."""
    scan = _Prescan(data[:PRESCAN_BYTES])
    try:
        return scan.run(resolve)
    except IndexError:  # ran past the bytes looked at: no charset
        return None


class _Prescan:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _byte(self) -> int:
        return self.data[self.pos]  # IndexError past the end: the scan stops

    def run(self, resolve: Callable[[str], str | None]) -> str | None:
        data = self.data
        while self.pos < len(data):
            if data.startswith(b"<!--", self.pos):
                end = data.find(b"-->", self.pos + 2)  # `<!-->` closes the comment too
                if end < 0:
                    return None
                self.pos = end + 3
                continue
            head = data[self.pos : self.pos + 6].lower()
            if head[:5] == b"<meta" and len(head) == 6 and head[5] in _SPACE_OR_SLASH:
                self.pos += 5
                codec = self._meta(resolve)
                if codec is not None:
                    return codec
                continue
            if head[:1] == b"<" and (head[1:2].isalpha() or (head[1:2] == b"/" and head[2:3].isalpha())):
                self.pos += 2 if head[1:2] == b"/" else 1
                while self._byte() not in _SPACE and self._byte() != ord(">"):
                    self.pos += 1
                while self._attribute() is not None:
                    pass
                self.pos += 1
                continue
            if head[:2] in (b"<!", b"</", b"<?"):
                end = data.find(b">", self.pos + 2)
                if end < 0:
                    return None
                self.pos = end + 1
                continue
            self.pos += 1
        return None

    def _meta(self, resolve: Callable[[str], str | None]) -> str | None:
        """The codec of the meta tag at the position (just past `<meta`), or None; the position ends past it."""
        seen: set[str] = set()
        got_pragma = decided = False
        need_pragma: bool | None = None
        codec: str | None = None
        while (attribute := self._attribute()) is not None:
            name, value = attribute
            if name in seen:
                continue
            seen.add(name)
            if name == "http-equiv" and value == "content-type":
                got_pragma = True
            elif name == "content" and not decided:
                label = _charset_in_content(value)
                if label is not None:
                    codec, need_pragma, decided = resolve(label), True, True
            elif name == "charset" and not decided:
                codec, need_pragma, decided = resolve(value), False, True
        self.pos += 1
        if need_pragma is None or (need_pragma and not got_pragma) or codec is None or codec in _UTF32:
            return None
        return "utf-8" if codec in _UTF16 else codec

    def _attribute(self) -> tuple[str, str] | None:
        """The next attribute (name, value; lowercased) of the tag at the position, or None at its `>`."""
        while self._byte() in _SPACE_OR_SLASH:
            self.pos += 1
        if self._byte() == ord(">"):
            return None
        name = bytearray()
        value = bytearray()
        while True:  # the name
            byte = self._byte()
            if byte == ord("=") and name:
                self.pos += 1
                break
            if byte in _SPACE:
                while self._byte() in _SPACE:
                    self.pos += 1
                if self._byte() != ord("="):
                    return _text(name), ""
                self.pos += 1
                break
            if byte in b"/>":
                return _text(name), ""
            name.append(byte)
            self.pos += 1
        while self._byte() in _SPACE:  # the value
            self.pos += 1
        quote = self._byte()
        if quote in b"\"'":
            while True:
                self.pos += 1
                if self._byte() == quote:
                    self.pos += 1
                    return _text(name), _text(value)
                value.append(self._byte())
        if quote == ord(">"):
            return _text(name), ""
        while self._byte() not in _SPACE and self._byte() != ord(">"):
            value.append(self._byte())
            self.pos += 1
        return _text(name), _text(value)


def _text(raw: bytearray) -> str:
    return bytes(raw).lower().decode("latin-1")  # ASCII letters lowercased, as the standard does; others kept


def _charset_in_content(content: str) -> str | None:
    """The charset a `content="text/html; charset=..."` value names ("extract a character encoding from a meta
    element"), or None."""
    pos = 0
    while True:
        found = content.find("charset", pos)
        if found < 0:
            return None
        pos = found + len("charset")
        while pos < len(content) and content[pos] in "\t\n\x0c\r ":
            pos += 1
        if pos < len(content) and content[pos] == "=":
            break
    pos += 1
    while pos < len(content) and content[pos] in "\t\n\x0c\r ":
        pos += 1
    if pos >= len(content):
        return None
    if content[pos] in "\"'":
        end = content.find(content[pos], pos + 1)
        return content[pos + 1 : end] if end >= 0 else None
    end = pos
    while end < len(content) and content[end] not in "\t\n\x0c\r ;":
        end += 1
    return content[pos:end]
