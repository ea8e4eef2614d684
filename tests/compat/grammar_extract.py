"""Extract every ereport() of PostgreSQL's raw parser (gram.y, scan.l, parser.c) from
the C sources libpg_query ships, into tests/data/pg_grammar_ereports.json: the record
hoopy/protocols/postgres/grammarerrors.py is checked against.

libpg_query (inside pglast's source distribution) ships bison's and flex's output, not
gram.y/scan.l themselves; the rule actions are copied verbatim and `#line N "gram.y"`
markers give each action's line in the gram.y libpg_query compiled.  Run as

    python3 -m tests.compat.grammar_extract LABEL=PGLAST_SDIST_DIR ...

e.g. `15.1=pglast-5.10 18.6=pglast-8.8` (the unpacked sdists of pglast 5.10, PostgreSQL
15.1's parser, and pglast 8.8, PostgreSQL 18.6's: hoopy's; PyPI's pglast-VERSION.tar.gz).
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "pg_grammar_ereports.json"
SOURCES = {  # libpg_query file -> the source file its #line markers name
    "src_backend_parser_gram.c": "gram.y",
    "src_backend_parser_scan.c": "scan.l",
    "src_backend_parser_parser.c": "parser.c",
}


def _balanced(text: str, i: int) -> int:
    """Index just after the ')' closing the '(' before `i` (C strings, chars, comments
    skipped)."""
    depth, instr, esc = 1, False, False
    while depth:
        c = text[i]
        if instr:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                instr = False
        elif c == '"':
            instr = True
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 1
        elif c == "'":  # a char literal such as '"' or '\''
            i = text.index("'", i + 2 if text[i + 1] == "\\" else i + 1)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        i += 1
    return i


def _c_string(literals: str) -> str:
    """Concatenated C string literals, unescaped (\\" \\\\ only, as the grammar uses)."""
    out = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', literals))
    return re.sub(r"\\(.)", r"\1", out)


def _field(body: str, name: str) -> str | None:
    m = re.search(r"\b" + name + r"\s*\(", body)
    if not m:
        return None
    inner = body[m.end() : _balanced(body, m.end()) - 1]
    lit = re.match(r'\s*((?:"(?:[^"\\]|\\.)*"\s*)+)', inner)
    return _c_string(lit.group(1)) if lit else None


def extract(path: Path, source: str) -> list[dict[str, object]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    mapped: dict[int, int] = {}
    cur: tuple[int, int] | None = None
    for i, line in enumerate(lines):
        m = re.match(r'#line (\d+) "(.*?)"', line)
        if m:
            cur = (int(m.group(1)), i) if m.group(2).endswith(source) else None
        elif cur:
            mapped[i] = cur[0] + (i - cur[1] - 1)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    out: list[dict[str, object]] = []
    for m in re.finditer(r"\bereport\s*\(\s*(ERROR|WARNING|NOTICE)\b", text):
        body = text[m.start() : _balanced(text, text.index("(", m.start()) + 1)]
        if "errmsg_internal" in body:
            continue  # scanner_yyerror's pass-through of a message made elsewhere
        idx = bisect.bisect_right(starts, m.start()) - 1
        code = re.search(r"errcode\((\w+)\)", body)
        out.append(
            {
                "file": source,
                # gram.y/scan.l line from the #line markers; parser.c is plain C
                "line": mapped.get(idx) if source != "parser.c" else None,
                "level": m.group(1),
                "code": code.group(1) if code else None,
                "message": _field(body, "errmsg"),
                "hint": _field(body, "errhint"),
                "detail": _field(body, "errdetail"),
                "position": bool(re.search(r"(parser|scanner|lexer)_errposition", body)),
            }
        )
    return out


def main(argv: list[str]) -> None:
    data: dict[str, list[dict[str, object]]] = {}
    for arg in argv:
        label, _, folder = arg.partition("=")
        base = Path(folder) / "libpg_query" / "src" / "postgres"
        data[label] = [r for f, s in SOURCES.items() for r in extract(base / f, s)]
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{OUT}: " + ", ".join(f"{k}: {len(v)} ereports" for k, v in data.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
