"""Writes one pgbench script per query of `corridor bench search`'s mix.

Usage: corridor bench search --list-queries | queries.py DIR MODE

MODE is `names` (the two names), `alltext` (names, description, maker, model
and techniques), or `plain` (the names, unranked and without facets:
PostgreSQL's best case, not like for like with Corridor, which ranks every
search and counts facets). The mix comes from Corridor's own benchmark on
standard input: Chinese, English, filtered (Zhejiang and Anhui, vouchers
accepted) and faceted (counts by city, category and institution). Each word of
a query must occur in the column, as a literal ILIKE pattern, so that the plan
is made with the constant and the trigram index is used; hits are ranked by
the names' trigram similarity to the query, nearest first from a GiST trigram
index.
"""

import json
import sys
from pathlib import Path


def script(kind: str, query: str, mode: str) -> str:
    assert "'" not in query and "%" not in query and "_" not in query
    column = "alltext" if mode == "alltext" else "names"
    words = query.lower().split()
    where = " AND ".join(f"{column} ILIKE '%{w}%'" for w in words)
    if kind == "filtered":
        where += " AND province IN ('Zhejiang', 'Anhui') AND accepts_vouchers"
    if mode == "plain":
        return (
            f"-- {kind}: {query}\nSELECT id, name_zh, name_en, city, institution, price_external_fen\n"
            f"FROM instruments WHERE {where} LIMIT 20;\n"
        )
    # `<->` is 1 - similarity, so this is the similarity ranking, read in
    # order from the GiST trigram index (nearest first) instead of scoring
    # and sorting every match: 2.6 times the searches a second here. A tie
    # break by id would force the sort back, so ties come in index order.
    sql = (
        f"SELECT id, name_zh, name_en, city, institution, price_external_fen,"
        f" similarity(names, '{query}') AS score\n"
        f"FROM instruments WHERE {where}\nORDER BY names <-> '{query}' LIMIT 20;\n"
    )
    if kind == "faceted":
        sql += (
            f"SELECT city, category, institution, count(*) FROM instruments WHERE {where}\n"
            "GROUP BY GROUPING SETS ((city), (category), (institution));\n"
        )
    return f"-- {kind}: {query}\n{sql}"


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    assert mode in ("names", "alltext", "plain")
    out.mkdir(parents=True, exist_ok=True)
    for i, q in enumerate(json.load(sys.stdin)):
        kind, query = q["kind"], q["query"]
        (out / f"{mode}-{i:02}.sql").write_text(script(kind, query, mode))


if __name__ == "__main__":
    main()
