"""The read-only gate for analytics SQL: one SELECT-like statement, nothing that writes.

This is the first of two locks: the query also runs with ClickHouse's `readonly` setting, which is
what actually forbids writes. The gate exists for clear refusals and for what `readonly` lets through
(`INTO OUTFILE` is executed by embedded chDB even in readonly mode).
"""

from __future__ import annotations

import re

_ALLOWED = re.compile(r"^\(*\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.IGNORECASE)
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)
_QUOTES = {"'": "'", '"': '"', "`": "`"}


def code_only(sql: str) -> str | None:
    """`sql` with string literals and quoted names blanked and comments removed; None if a quote is open."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in _QUOTES:
            close = _QUOTES[ch]
            i += 1
            while i < n:
                if sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == close:
                    if i + 1 < n and sql[i + 1] == close:  # a doubled quote inside the literal
                        i += 2
                        continue
                    break
                i += 1
            if i >= n:
                return None
            out.append(f"{ch}{close}")
            i += 1
        elif sql.startswith("--", i) or ch == "#":
            end = sql.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                return None
            i = end + 2
            out.append(" ")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_read_only(sql: str) -> str | None:
    """None when `sql` is one read-only statement, else the reason it is refused."""
    code = code_only(sql)
    if code is None:
        return "unterminated quote or comment"
    body = code.strip().rstrip(";").strip()
    if not body:
        return "empty query"
    if ";" in body:
        return "only one statement per query"
    if not _ALLOWED.match(body):
        return "only read-only queries (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS) are allowed"
    if _OUTFILE.search(body):
        return "INTO OUTFILE is not allowed"
    return None
