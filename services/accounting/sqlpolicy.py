"""Which analytics SQL may run, decided on ClickHouse's own parse of it (`parseQueryToJSON`); pure, no I/O.

The caller asks ClickHouse for the canonical single-line text of a query and the JSON of the AST of that
text, and runs exactly that text if `refusal` says nothing: what is judged here is what runs, whatever
comments, quotes or escapes the original text used. Nothing here looks at the text the user typed.

Allowed: one SELECT (with WITH, UNION, INTERSECT/EXCEPT, JOIN, ARRAY JOIN, subqueries, window functions)
reading gatehouse's tables (qualified, if at all, by the reader connection's database) and the CTEs it
defines, row-generating table functions (`numbers`, `values`, …), and scalar functions other than those
that touch files, the network, settings or the server's configuration; plus `SHOW TABLES` and
`DESCRIBE TABLE <gatehouse table>`. Refused: everything else, each with a sentence that says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# table functions that only generate rows from their own arguments (SQLStandardValues is how ClickHouse
# parses `FROM (VALUES (1, 'a'), …)`); every other one reads files, URLs, other servers or other tables
TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generateRandom", "generate_series", "primes"}
)
_TABLE_FUNCTIONS = frozenset(f.lower() for f in TABLE_FUNCTIONS) | {"generateseries", "sqlstandardvalues"}

# scalar functions refused by name (lower case), beyond the patterns below: server identity and
# configuration, other tables by name, introspection, side effects (Keeper writes, server log, sleeping)
DENIED_FUNCTIONS = frozenset(
    {
        "fqdn",
        "getserverport",
        "tcpport",
        "serveruuid",
        "displayname",
        "getoskernelversion",
        "globalvariable",
        "joinget",
        "joingetornull",
        "hascolumnintable",
        "generateserialid",
        "logtrace",
        "tid",
        "addresstoline",
        "addresstolinewithinlines",
        "addresstosymbol",
        "demangle",
        "currentroles",
        "enabledroles",
        "defaultroles",
    }
)

# any function whose lower-case name contains one of these (files, network, settings, macros, dictionaries,
# models, LLM calls, ClickHouse-internal `_`/`__` functions); this also refuses a few pure functions
# (URL string helpers such as `domain`'s siblings `cutURLParameter`, `decodeURLComponent`) on purpose
_DENIED_PATTERN = re.compile(
    r"file|url|s3|remote|shell|exec|hdfs|azure|setting|macro|cluster|hostname|certificate|header|sleep"
    r"|keeper|python|catboost|naivebayes|^dict|^region|^ai|^_"
)

_WHY_TABLE_FUNCTION = tuple(
    (re.compile(pattern), reason)
    for pattern, reason in (
        (r"^(file|filecluster|filesystem)$", "reads files"),
        (r"^(url|s3|gcs|oss|cosn|hdfs|azure|iceberg|deltalake|hudi|paimon)", "reaches storage over the network"),
        (r"^(remote|remotesecure|cluster|clusterallreplicas)$", "queries other servers"),
        (r"^(mysql|postgresql|mongodb|redis|sqlite|odbc|jdbc|bigquery|ytsaurus)$", "connects to another database"),
        (r"^(executable|python|arrowstream|eval|input)$", "runs code or reads process input"),
        (r"^(merge|loop|dictionary|view|mergetree)", "reads other tables"),
    )
)

_IN_FUNCTIONS = frozenset(
    {"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin", "globalnotnullin"}
)
_SYSTEM_DATABASES = frozenset({"system", "information_schema"})
# keys a parsed SELECT carries whatever it says; anything else at the top of SHOW TABLES is an option
_OUTPUT_FLAGS = frozenset({"type", "is_outfile_append", "is_outfile_truncate", "is_into_outfile_with_stdout"})

Node = dict[str, object]


@dataclass(frozen=True, slots=True)
class Catalog:
    """What a query may read: gatehouse's tables, in the database the reader connection uses."""

    database: str
    tables: frozenset[str]


def unparsable_refusal(canonical: str, catalog: Catalog) -> str | None:
    """For a statement parseQueryToJSON cannot render: None if it is DESCRIBE TABLE of a gatehouse table.

    `canonical` is ClickHouse's own rendering, so an exact match is the whole check.
    """
    if canonical in {f"DESCRIBE TABLE {table}" for table in catalog.tables}:
        return None
    if canonical.startswith("DESCRIBE "):
        return f"DESCRIBE TABLE is allowed for gatehouse tables only ({', '.join(sorted(catalog.tables))})"
    words = canonical.split(" ", 2)
    verb = " ".join(words[:2]) if words[0] == "SHOW" else words[0]
    return f"{verb.upper()} statements are not allowed (only SELECT, SHOW TABLES and DESCRIBE TABLE)"


def refusal(ast: object, catalog: Catalog) -> str | None:
    """None when the parsed statement may run as is, else why it may not (one sentence, for the user)."""
    if not isinstance(ast, dict):
        return "the query could not be parsed"
    kind = ast.get("type")
    if kind == "ShowTablesQuery":
        if set(ast) - _OUTPUT_FLAGS or any(ast.get(flag) is True for flag in _OUTPUT_FLAGS - {"type"}):
            return "only a plain SHOW TABLES is allowed (no FROM, LIKE or other options)"
        return None
    if kind != "SelectWithUnionQuery":
        return f"{_statement(kind)} statements are not allowed (only SELECT, SHOW TABLES and DESCRIBE TABLE)"
    nodes = list(_nodes(ast))
    ctes = frozenset(str(n["name"]) for n in nodes if n.get("type") == "WithElement" and "name" in n)
    for node in nodes:
        why = _clause_refusal(node) or _node_refusal(node, catalog, ctes)
        if why:
            return why
    return None


def _nodes(root: Node) -> Iterator[Node]:
    """Every AST node under `root`, parents before children; literal values are data, not nodes."""
    stack: list[object] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            if "type" in item:
                yield item
                if item["type"] == "Literal":
                    continue
            stack.extend(reversed(list(item.values())))


def _clause_refusal(node: Node) -> str | None:
    if "out_file" in node or node.get("is_into_outfile_with_stdout") is True:
        return "INTO OUTFILE is not allowed (results come back in the reply, never into files)"
    if "settings_ast" in node or node.get("type") == "SetQuery":
        return "a SETTINGS clause is not allowed (read-only mode and limits are fixed by gatehouse)"
    if "format_ast" in node:
        return "a FORMAT clause is not allowed (gatehouse chooses the wire format; use --format)"
    if node.get("type") == "QueryParameter":
        return "query parameters ({name:Type}) are not supported"
    return None


def _node_refusal(node: Node, catalog: Catalog, ctes: frozenset[str]) -> str | None:
    kind = node.get("type")
    if kind == "TableExpression":
        function = node.get("table_function")
        if isinstance(function, dict):
            return _table_function_refusal(str(function.get("name", "")))
    elif kind == "TableIdentifier":
        return _table_refusal(node, catalog, ctes)
    elif kind == "Function":
        name = str(node.get("name", ""))
        return _function_refusal(name) or _in_table_refusal(node, catalog, ctes)
    elif kind == "ColumnsApplyTransformer":  # `COLUMNS(…) APPLY fn` names a function without calling it
        return _function_refusal(str(node.get("func_name", "")))
    elif kind == "Identifier":
        parts = _name_parts(node)
        if len(parts) > 1 and parts[0].lower() in _SYSTEM_DATABASES:
            return f"{'.'.join(parts)}: system tables are not readable through gatehouse sql"
    return None


def _table_function_refusal(name: str) -> str | None:
    lower = name.lower()
    if lower in _TABLE_FUNCTIONS:
        return None
    why = next((reason for pattern, reason in _WHY_TABLE_FUNCTION if pattern.search(lower)), "")
    allowed = ", ".join(sorted(TABLE_FUNCTIONS, key=str.lower))
    return f"table function {name}() {why + ' and ' if why else ''}is not allowed (allowed: {allowed})"


def _function_refusal(name: str) -> str | None:
    lower = name.lower()
    if lower in DENIED_FUNCTIONS or _DENIED_PATTERN.search(lower):
        return (
            f"function {name}() is not allowed (functions that reach files, the network, settings "
            "or the server's configuration are refused)"
        )
    return None


def _in_table_refusal(node: Node, catalog: Catalog, ctes: frozenset[str]) -> str | None:
    """`x IN name` reads the table `name`: the same rule as FROM."""
    if str(node.get("name", "")).lower() not in _IN_FUNCTIONS:
        return None
    arguments = node.get("arguments")
    children = arguments.get("children") if isinstance(arguments, dict) else None
    if isinstance(children, list) and len(children) == 2:  # left IN right
        right = children[1]
        if isinstance(right, dict) and right.get("type") in {"Identifier", "TableIdentifier"}:
            return _table_refusal(right, catalog, ctes)
    return None


def _table_refusal(node: Node, catalog: Catalog, ctes: frozenset[str]) -> str | None:
    parts = _name_parts(node)
    readable = ", ".join(sorted(catalog.tables))
    if len(parts) == 1:
        # an unqualified name is a CTE of this query or a table of the reader's own database
        if parts[0] in catalog.tables or parts[0] in ctes:
            return None
        return f"table {parts[0]} is not a gatehouse table (readable: {readable})"
    name = ".".join(parts)
    if len(parts) == 2 and parts[0] == catalog.database and parts[1] in catalog.tables:
        return None
    if parts[0].lower() in _SYSTEM_DATABASES:
        return f"{name}: system tables are not readable through gatehouse sql (readable: {readable})"
    return f"table {name} is not a gatehouse table (readable: {readable}, in database {catalog.database})"


def _name_parts(node: Node) -> list[str]:
    parts = node.get("name_parts")
    if isinstance(parts, list) and parts:
        return [str(p) for p in parts]
    return [str(node.get("name", ""))]


def _statement(kind: object) -> str:
    """`ExplainQuery` → `EXPLAIN`-style names for the refusal message."""
    text = str(kind or "unknown").removesuffix("Query")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text).upper()
