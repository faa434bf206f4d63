"""The analytics SQL policy on parse trees shaped like ClickHouse's parseQueryToJSON (real parses: integration)."""

from __future__ import annotations

import pytest

from services.accounting import migrations
from services.accounting.sqlpolicy import Catalog, refusal, unparsable_refusal

CATALOG = Catalog("gatehouse", migrations.tables(migrations.load()))
Node = dict[str, object]


def ident(name: str, kind: str = "Identifier") -> Node:
    parts = name.split(".")
    return {"type": kind, "name": name, **({"name_parts": parts} if len(parts) > 1 else {})}


def literal(value: object) -> Node:
    return {"type": "Literal", "value": {"field_type": "String", "value": value}}


def fn(name: str, *args: Node) -> Node:
    return {"type": "Function", "name": name, "arguments": {"type": "ExpressionList", "children": list(args)}}


def table(source: Node) -> Node:
    key = "table_function" if source["type"] == "Function" else "database_and_table_name"
    if source["type"] == "Subquery":
        key = "subquery"
    return {"type": "TablesInSelectQueryElement", "table_expression": {"type": "TableExpression", key: source}}


def named(name: str) -> Node:
    """FROM <name>: a table (or CTE) by name."""
    return table(ident(name, "TableIdentifier"))


def select(*columns: Node, tables: list[Node] | None = None, **clauses: object) -> Node:
    """A SelectWithUnionQuery of one SELECT; `clauses` go on the SELECT (where, with, settings, …)."""
    query: Node = {"type": "SelectQuery", "select": {"type": "ExpressionList", "children": list(columns)}}
    if tables:
        query["tables"] = {"type": "TablesInSelectQuery", "children": tables}
    query.update(clauses)
    return {
        "type": "SelectWithUnionQuery",
        "union_mode": "UNION_DEFAULT",
        "list_of_selects": {"type": "ExpressionList", "children": [query]},
        "is_outfile_append": False,
        "is_outfile_truncate": False,
        "is_into_outfile_with_stdout": False,
    }


def subquery(inner: Node) -> Node:
    return {"type": "Subquery", "children": [inner]}


def cte(name: str, inner: Node) -> Node:
    return {"type": "ExpressionList", "children": [{"type": "WithElement", "name": name, "subquery": subquery(inner)}]}


@pytest.mark.parametrize(
    "ast",
    [
        select(fn("count"), tables=[named("requests")]),
        select(fn("sum", ident("requests")), tables=[named("gatehouse.requests_per_hour")]),
        select(ident("number"), tables=[table(fn("numbers", literal(10)))]),
        select(ident("a"), tables=[table(fn("generateRandom", literal("a UInt8")))]),
        select(
            fn("count"),
            tables=[named("recent")],
            **{"with": cte("recent", select(ident("x"), tables=[named("requests")]))},
        ),
        # the file name and SQL inside string literals are data
        select(literal("file('/etc/passwd') INTO OUTFILE 'x'"), fn("lower", literal("SETTINGS readonly=0"))),
        select(fn("in", ident("key_id"), ident("schema_migrations")), tables=[named("requests")]),
        {"type": "ShowTablesQuery", "is_outfile_append": False, "is_into_outfile_with_stdout": False},
    ],
)
def test_reads_of_gatehouse_tables_and_generated_rows_are_allowed(ast: Node) -> None:
    assert refusal(ast, CATALOG) is None


@pytest.mark.parametrize(
    ("ast", "reason"),
    [
        (select(fn("file", literal("/proc/self/environ"))), "function file() is not allowed"),
        (select(fn("FILE", literal("/etc/passwd"))), "function FILE() is not allowed"),
        (select(ident("x"), tables=[table(fn("file", literal("/etc/passwd")))]), "table function file() reads files"),
        (select(ident("x"), tables=[table(fn("url", literal("http://x")))]), "url() reaches storage over the network"),
        (select(ident("x"), tables=[table(fn("s3Cluster", literal("c")))]), "s3Cluster() reaches storage"),
        (select(ident("x"), tables=[table(fn("remoteSecure", literal("h")))]), "queries other servers"),
        (select(ident("x"), tables=[table(fn("postgresql", literal("h")))]), "connects to another database"),
        (select(ident("x"), tables=[table(fn("executable", literal("sh")))]), "runs code"),
        (select(ident("x"), tables=[table(fn("merge", literal("system")))]), "reads other tables"),
        (select(ident("x"), tables=[table(fn("format", literal("CSV")))]), "table function format() is not allowed"),
        (select(ident("x"), tables=[named("system.users")]), "system tables"),
        (select(ident("x"), tables=[named("INFORMATION_SCHEMA.TABLES")]), "system tables"),
        (select(ident("x"), tables=[named("other.requests")]), "not a gatehouse table"),
        (select(ident("x"), tables=[named("secrets")]), "secrets is not a gatehouse table"),
        (
            select(ident("x"), tables=[named("system.users")]),
            "readable: audit_log, batch_jobs, budget_alerts, guard_verdicts",
        ),
        (select(fn("dictGet", literal("d"), literal("a"), literal(1))), "function dictGet() is not allowed"),
        (select(fn("getSetting", literal("readonly"))), "getSetting() is not allowed"),
        (select(fn("hostName")), "hostName() is not allowed"),
        (select(fn("joinGet", literal("system.x"), literal("a"), literal(1))), "joinGet() is not allowed"),
        (select(fn("aiGenerate", literal("hi"))), "aiGenerate() is not allowed"),
        (select(fn("__getScalar", literal("x"))), "__getScalar() is not allowed"),
        (select(fn("in", literal(1), ident("system.users"))), "system tables"),
        (select(fn("notIn", literal(1), ident("nowhere"))), "nowhere is not a gatehouse table"),
        (select(fn("plus", ident("system.one.dummy"), literal(1))), "system tables"),
        (
            select(
                {
                    "type": "Asterisk",
                    "transformers": {
                        "type": "ColumnsTransformerList",
                        "children": [{"type": "ColumnsApplyTransformer", "func_name": "file"}],
                    },
                }
            ),
            "function file() is not allowed",
        ),
        # dangerous parts deep inside subqueries, CTEs, joins and unions are found all the same
        (select(fn("equals", subquery(select(fn("file", literal("/x")))), literal(1))), "file() is not allowed"),
        (
            select(
                fn("count"),
                tables=[named("c")],
                **{"with": cte("c", select(ident("x"), tables=[named("system.users")]))},
            ),
            "system tables",
        ),
        (
            select(
                ident("x"),
                tables=[
                    named("requests"),
                    table(subquery(select(ident("name"), tables=[table(fn("url", literal("h")))]))),
                ],
            ),
            "url()",
        ),
        ({**select(literal(1)), "out_file": literal("/tmp/x")}, "INTO OUTFILE is not allowed"),
        ({**select(literal(1)), "is_into_outfile_with_stdout": True}, "INTO OUTFILE is not allowed"),
        ({**select(literal(1)), "format_ast": ident("JSON")}, "FORMAT clause is not allowed"),
        ({**select(literal(1)), "settings_ast": {"type": "SetQuery", "changes": []}}, "SETTINGS clause is not allowed"),
        (select(literal(1), settings={"type": "SetQuery", "changes": [{"name": "readonly"}]}), "SETTINGS clause"),
        (select({"type": "QueryParameter", "name": "p", "param_type": "UInt8"}), "query parameters"),
        (
            {"type": "ExplainQuery", "kind": "EXPLAIN", "query": select(literal(1))},
            "EXPLAIN statements are not allowed",
        ),
        ({"type": "AlterQuery"}, "ALTER statements are not allowed"),
        ({"type": "ShowTablesQuery", "databases": True}, "only a plain SHOW TABLES"),
        ({"type": "ShowTablesQuery", "from": ident("system")}, "only a plain SHOW TABLES"),
        ([1, 2], "could not be parsed"),
    ],
)
def test_files_network_settings_and_other_tables_are_refused(ast: object, reason: str) -> None:
    refused = refusal(ast, CATALOG)
    assert refused is not None and reason in refused, refused


def test_a_cte_name_is_readable_only_in_a_query_that_defines_it() -> None:
    reads_c = {"tables": {"type": "TablesInSelectQuery", "children": [named("c")]}}
    readable = ", ".join(sorted(migrations.tables(migrations.load())))
    assert refusal(select(literal(1), **reads_c), CATALOG) == f"table c is not a gatehouse table (readable: {readable})"
    defined = select(literal(1), **reads_c, **{"with": cte("c", select(literal(2)))})
    assert refusal(defined, CATALOG) is None


def test_the_readable_tables_are_the_migrations_tables_and_the_ledger() -> None:
    assert {"requests", "guard_verdicts", "requests_per_minute", "requests_per_hour", "schema_migrations"} <= (
        CATALOG.tables
    )
    assert not any(t.startswith("system") for t in CATALOG.tables)


@pytest.mark.parametrize(
    ("canonical", "reason"),
    [
        ("DESCRIBE TABLE requests", None),
        ("DESCRIBE TABLE guard_verdicts", None),
        ("DESCRIBE TABLE system.users", "gatehouse tables only"),
        ("DESCRIBE TABLE file('/etc/passwd')", "gatehouse tables only"),
        ("DESCRIBE TABLE (SELECT 1)", "gatehouse tables only"),
        ("EXISTS TABLE requests", "EXISTS statements are not allowed"),
        ("SHOW CREATE TABLE requests", "SHOW CREATE statements are not allowed"),
        ("INSERT INTO requests (event_id) VALUES", "INSERT statements are not allowed"),
    ],
)
def test_statements_without_a_json_parse_only_describe_gatehouse_tables(canonical: str, reason: str | None) -> None:
    refused = unparsable_refusal(canonical, CATALOG)
    assert refused is None if reason is None else (refused is not None and reason in refused)
