"""pgquery: libpg_query (through postgast) as hoopy reads it — JSON tree, normalize,
scanner tokens and errors in character positions, split, and the approvers' reprint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hoopy.protocols.postgres import pgquery


def test_grammar_is_postgresql_18() -> None:
    assert pgquery.POSTGRESQL_VERSION[0] == 18
    tree = json.loads(pgquery.parse_json("select 1"))
    assert tree["version"] // 10_000 == 18
    assert list(tree["stmts"][0]["stmt"]) == ["SelectStmt"]


def test_empty_text_is_no_statement() -> None:
    for sql in ("", " -- nothing\n"):
        assert json.loads(pgquery.parse_json(sql))["stmts"] == []
        assert pgquery.split(sql) == ()


@pytest.mark.parametrize(
    ("sql", "message", "at"),
    [
        ("select * fro t", 'syntax error at or near "fro"', "fro"),
        # positions count characters, not UTF-8 bytes: é and 😀 are one each
        ("select 'é😀', \"ü\" from where", 'syntax error at or near "where"', "where"),
        ("select 'abc", 'unterminated quoted string at or near "\'abc"', "'abc"),
        ("select e'\\u12'", "invalid Unicode escape", "\\u12"),
    ],
)
def test_error_position_is_a_character_index(sql: str, message: str, at: str) -> None:
    with pytest.raises(pgquery.ParseError) as e:
        pgquery.parse_json(sql)
    assert (e.value.message, e.value.position) == (message, sql.index(at))
    assert e.value.args == (message, sql.index(at))


def test_error_at_end_of_input_has_no_position() -> None:
    for call in (pgquery.parse_json, pgquery.normalize, pgquery.split):
        with pytest.raises(pgquery.ParseError) as e:
            call("select (1")
        assert (e.value.message, e.value.position) == ("syntax error at end of input", None)


def test_text_that_is_not_utf8_raises_unicode_error() -> None:
    for call in (pgquery.parse_json, pgquery.normalize, pgquery.split, pgquery.scan):
        with pytest.raises(UnicodeError):
            call("select '\ud800'")


def test_scan_tokens_in_characters_with_comments() -> None:
    sql = "select 'é😀', x /* ü */ from t -- 😀\n;"
    toks = pgquery.scan(sql)
    assert [(sql[t.start : t.end + 1], t.name) for t in toks] == [
        ("select", "SELECT"),
        ("'é😀'", "SCONST"),
        (",", "ASCII_44"),
        ("x", "IDENT"),
        ("/* ü */", "C_COMMENT"),
        ("from", "FROM"),
        ("t", "IDENT"),
        ("-- 😀", "SQL_COMMENT"),
        (";", "ASCII_59"),
    ]
    assert toks[0].kind == "RESERVED_KEYWORD" and toks[3].kind == "NO_KEYWORD"


def test_scan_error_is_a_parse_error_with_position() -> None:
    with pytest.raises(pgquery.ParseError) as e:
        pgquery.scan("select 1, 'é")
    assert e.value.position == len("select 1, ")


def test_split_by_the_parser_stripped() -> None:
    sql = " select ';' ;\n\n insert into t values ($$;$$) ; "
    assert pgquery.split(sql) == ("select ';'", "insert into t values ($$;$$)")


@pytest.mark.parametrize(
    ("sql", "secret"),
    [
        ("CREATE ROLE r PASSWORD 'hunter2'", "hunter2"),
        ("ALTER USER r WITH ENCRYPTED PASSWORD 'hunter2'", "hunter2"),
        ("CREATE USER MAPPING FOR u SERVER s OPTIONS (user 'a', password 'hunter2')", "hunter2"),
        ("CREATE SUBSCRIPTION s CONNECTION 'password=hunter2' PUBLICATION p", "hunter2"),
        ("ALTER SUBSCRIPTION s CONNECTION 'password=hunter2'", "hunter2"),
        ("SELECT * FROM t WHERE card = '4111111111111111'", "4111"),
    ],
)
def test_normalize_leaves_out_what_approvers_must_not_read(sql: str, secret: str) -> None:
    # normalize() is the fingerprint approvers see (classify._fingerprint)
    assert secret not in pgquery.normalize(sql)


def test_object_types_are_the_c_enum_names() -> None:
    types = pgquery.OBJECT_TYPES
    assert len(types) == len(set(types)) == 52
    assert types[0] == "OBJECT_ACCESS_METHOD" and "OBJECT_TABLE" in types
    assert not any("UNDEFINED" in t for t in types)


def test_pretty_prints_what_runs() -> None:
    sql = "update orders set status='x' /* why */ where id = 7 or true; select 1"
    assert pgquery.pretty(sql) == (
        "UPDATE orders\nSET status = 'x'\nWHERE\n  id = 7\n  OR TRUE;\n\nSELECT 1"
    )


def test_pretty_refuses_a_reprint_that_is_another_statement() -> None:
    # postgast 0.2's formatter prints the bit string B'101' as the column name b101
    with pytest.raises(ValueError, match="not be the statement that runs"):
        pgquery.pretty("select B'101' from t")


def test_pretty_never_reaches_the_c_deparser() -> None:
    # libpg_query's deparser crashes the process on these (valid) statements; the
    # formatter falls back to it for nodes it has no printer for.  In a child process:
    # a crash shows as a signal, not as a failed assertion here.
    code = (
        "from hoopy.protocols.postgres import pgquery\n"
        "for s in ['COPY t TO STDOUT (DELIMITER 0)', 'COPY t TO STDOUT (FORMAT csv, NULL 2)']:\n"
        "    try:\n"
        "        pgquery.pretty(s)\n"
        "    except ValueError:\n"
        "        pass\n"
        "print('alive')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "alive\n"), done.stderr[-2000:]


def test_a_nul_is_refused_not_read_as_the_end_of_the_text() -> None:
    # libpg_query reads a C string: what follows a NUL would go unread
    sql = "select 1 /* x */\0; drop table t"
    for call in (pgquery.parse_json, pgquery.normalize, pgquery.split, pgquery.scan):
        with pytest.raises(pgquery.ParseError) as e:
            call(sql)
        assert e.value.args == ("statement contains a NUL character", sql.index("\0"))


def test_approvers_see_the_whole_text_past_a_nul() -> None:
    from hoopy.slack import pretty_sql

    sql = "select 1 /* x */\0; drop table t"
    assert pretty_sql(sql) == sql  # pglast's scan stopped at the NUL: "SELECT 1"
