"""SQL text → the part of libpg_query's JSON parse tree that classification reads.

Theory of operation
-------------------
Classification (classify.py) never looks at a literal constant (`A_Const`) nor at a
position in the text (`location`, `stmt_location`, `stmt_len`).  `shape()` removes them
from libpg_query's JSON with three linear regular-expression passes over the JSON text,
before `json.loads` builds a single Python object:

* every `{"A_Const":{…}}` becomes `0` (the walk skips non-containers, as it skipped
  A_Const);
* every `,"location":N` (and the statement offsets) goes;
* a target or a list left holding only such zeros (`SELECT 1,1,1…`, a row of a
  multi-row `VALUES`) becomes one `0` as well: nothing in it can name a relation or a
  function.

The result is both the classifier's input and its cache key, so the key is exact by
construction: two texts with the same shape are classified from the same tree, whatever
their literals, whitespace, comments or keyword case.  And it is small: a 4 MB
multi-row INSERT or IN list shrinks to a few hundred kilobytes of JSON (the raw tree
is 8x the text; as Python objects it would be 100x), in time linear in the text.

JSON syntax makes the patterns safe: a `"` inside a JSON string is always escaped, so
`{"A_Const":{` or `,"location":` can only match structure, never string contents.
Anything a pattern does not match stays in the shape: a finer key, never a coarser one.
"""

from __future__ import annotations

import re

from hoopy.protocols.postgres import pgquery

_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
# {"A_Const":{"ival":{"ival":1},"location":7}}, {"A_Const":{"sval":{"sval":"…"}}},
# {"A_Const":{"isnull":true,"location":3}}, {"A_Const":{"ival":{},"location":9}} (zero)
_ONE_CONST = (
    r'\{"A_Const":\{(?:"isnull":true|"\w+":\{(?:"\w+":(?:'
    + _JSON_STRING
    + r'|[-+\w.]+))?\})?(?:,"location":-?\d+)?\}\}'
)
# A run of constants side by side (`,` then `{` only ever separates array elements) is
# one match: a 4 MB IN list is one replacement, not half a million.
_CONST = re.compile(f"{_ONE_CONST}(?:,{_ONE_CONST})*+")
# Then a run of targets or of lists holding nothing but one such 0: SELECT 1,1,1…, and
# the rows of a multi-row VALUES.
_LOC = r'(?:,"location":-?\d+)?'
_ONE_TRIVIAL = r'\{"ResTarget":\{"val":0' + _LOC + r'\}\}|\{"List":\{"items":\[0\]\}\}'
_TRIVIAL = re.compile(f"(?:{_ONE_TRIVIAL})(?:,(?:{_ONE_TRIVIAL}))*+")
_LOCATION = re.compile(r',"location":-?\d+')  # a literal prefix: searched fast
_OTHER_POSITION = re.compile(
    r',"(?:(?:stmt_|arg_|name_|payload_|conninfo_)location|stmt_len'
    r'|(?:rexpr_)?list_(?:start|end))":-?\d+'
)


def shape(sql: str) -> str:
    """The literal-free, position-free JSON parse tree of `sql`.

    Raises pgquery.ParseError (or UnicodeError) as pgquery.parse_json does."""
    return shape_of(sql)[0]


def shape_of(sql: str) -> tuple[str, bool]:
    """`shape(sql)`, and whether the tree has no DefElem nor subscription conninfo: then
    the only constants normalize() replaces are A_Const ones (see classify.Classifier)."""
    tree = pgquery.parse_json(sql)
    plain = '"DefElem"' not in tree and "conninfo" not in tree
    if '"A_Const"' in tree:
        tree = _CONST.sub("0", tree)
        if '"val":0' in tree or '"items":[0]' in tree:
            tree = _TRIVIAL.sub("0", tree)
    tree = _LOCATION.sub("", tree)
    if "location" in tree or "stmt_len" in tree or "list_" in tree:
        tree = _OTHER_POSITION.sub("", tree)
    return tree, plain
