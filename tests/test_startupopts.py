"""The `options` startup parameter: split as PostgreSQL splits it, safe settings only."""

from __future__ import annotations

import pytest

from hoopy.protocols.postgres.startupopts import OptionsError, parse_options, split_words


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        ("", {}),
        ("-c intervalstyle=postgres_verbose", {"intervalstyle": "postgres_verbose"}),
        ("-cdatestyle=ISO", {"datestyle": "ISO"}),
        ("--search-path=app,public", {"search_path": "app,public"}),
        (
            "--Statement_Timeout=5s  -c lock_timeout=1s",
            {"statement_timeout": "5s", "lock_timeout": "1s"},
        ),
        (r"-c search_path=a\ b", {"search_path": "a b"}),
    ],
)
def test_safe_settings(options: str, settings: dict[str, str]) -> None:
    assert parse_options(options) == settings


@pytest.mark.parametrize(
    "options",
    [
        "-c role=postgres",
        "-c session_authorization=postgres",
        "--role=postgres",
        "-c search_path=x -c ROLE=postgres",
        "-c default_transaction_read_only=off",
        "-c standard_conforming_strings=off",
        "-c client_encoding=SJIS",
        "-d 5",
        "-c",
        "-c timezone",
        "-c =x",
        "stray",
        r"-c\ timezone=UTC",  # one word, "-c timezone=UTC": the name has a space
    ],
)
def test_refused(options: str) -> None:
    with pytest.raises(OptionsError):
        parse_options(options)


def test_refusal_names_the_setting() -> None:
    with pytest.raises(OptionsError, match="'role'"):
        parse_options("-c role=postgres")


def test_split_words_like_pg_split_opts() -> None:
    assert split_words("  a  b\\  c\\\\ ") == ["a", "b ", "c\\"]
    assert split_words("\\") == [""]
