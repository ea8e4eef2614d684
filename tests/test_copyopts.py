"""COPY TO options read as PostgreSQL reads them (issue 17 §2): what the server
accepts gives the format it writes; anything else is refused, never guessed."""

from __future__ import annotations

import pytest

from hoopy.protocols.postgres.copyopts import CopyFormat, UnreadableCopy, copy_format

T = "COPY t TO STDOUT "


@pytest.mark.parametrize(
    ("opts", "header"),
    [
        ("(HEADER 0)", False),  # libpg_query: {"Integer": {}}
        ("(HEADER +0)", False),
        ("(HEADER 00)", False),
        ("(HEADER false)", False),
        ("(HEADER 'OFF')", False),
        ("(HEADER oFf)", False),
        ("", False),
        ("(HEADER 1)", True),
        ("(HEADER)", True),
        ("(HEADER true)", True),
        ("(HEADER 'On')", True),
        ("WITH CSV HEADER", True),  # old style: a Boolean node
    ],
)
def test_header_values(opts: str, header: bool) -> None:
    fmt = copy_format(T + opts)
    assert fmt is not None and fmt.header is header


@pytest.mark.parametrize(
    "opts",
    [
        "(HEADER match)",  # COPY FROM only
        "(HEADER 2)",
        "(HEADER -1)",
        "(HEADER 1.0)",
        "(HEADER yes)",  # defGetBoolean knows no yes/no, unlike SET
        "(HEADER t)",
        "(HEADER '')",
        "(HEADER 'of')",
        "(HEADER '\uff2f\uff2e')",  # full-width ON: not ASCII
        '("HEADER" 0)',  # option names compare case-sensitively
        "(HEADER 1, HEADER 0)",
        "WITH BINARY CSV",
        "(FORMAT 'CSV')",  # strcmp: only lower case
        "(FORMAT json)",
        "(DELIMITER '||')",
        "(DELIMITER 'é')",
        "(DELIMITER 10)",
        "(QUOTE '')",
        "(ENCODING 'SJIS')",
        "(ENCODING 'M S-Kanji')",
        "(ENCODING 'big-5')",
        "(ENCODING 'gb18030')",
        "(FORCE_QUOTE)",
        "(FREEZE yes)",
        "(CONVERT_SELECTIVELY (a))",
        "(ON_ERROR stop)",
        "(DEFAULT 'x')",
        "(FORCE_NOT_NULL (a))",
    ],
)
def test_options_hoopy_cannot_read_are_refused(opts: str) -> None:
    with pytest.raises(UnreadableCopy):
        copy_format(T + opts)


@pytest.mark.parametrize(
    ("opts", "expect"),
    [
        ("", CopyFormat()),
        ("(FORMAT csv)", CopyFormat(csv=True, delimiter=b",", null=b"")),
        ("(FORMAT CSV)", CopyFormat(csv=True, delimiter=b",", null=b"")),  # an identifier
        ("(FORMAT binary)", CopyFormat(binary=True)),
        ("BINARY", CopyFormat(binary=True)),
        ("(NULL 0)", CopyFormat(null=b"0")),
        ("(NULL -1.5)", CopyFormat(null=b"-1.5")),
        ("(NULL 1.50)", CopyFormat(null=b"1.50")),
        ("(NULL 99999999999)", CopyFormat(null=b"99999999999")),
        ("(FORMAT csv, DELIMITER 0)", CopyFormat(csv=True, delimiter=b"0", null=b"")),
        ("WITH DELIMITER AS '|' NULL AS 'x'", CopyFormat(delimiter=b"|", null=b"x")),
        (
            "WITH CSV HEADER QUOTE AS '''' ESCAPE AS '\\' FORCE QUOTE *",
            CopyFormat(True, b",", b"", b"'", b"\\", True),
        ),
        ("(FORMAT csv, QUOTE '$')", CopyFormat(True, b",", b"", b"$", b"$")),
        ("(FORMAT csv, FORCE_QUOTE (a, b))", CopyFormat(csv=True, delimiter=b",", null=b"")),
        ("(ENCODING 'LATIN1', FREEZE 0)", CopyFormat()),
        ("(ENCODING 'utf-8')", CopyFormat()),
    ],
)
def test_formats(opts: str, expect: CopyFormat) -> None:
    assert copy_format(T + opts) == expect


def test_copy_from_has_no_output_format() -> None:
    assert copy_format("COPY t FROM STDIN (HEADER match)") is None


def test_text_that_does_not_parse_is_refused() -> None:
    with pytest.raises(UnreadableCopy):
        copy_format("COPY t TO STDOUT (HEADER")
