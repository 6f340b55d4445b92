"""Writes one pgbench script per query of `corridor bench search`'s mix.

Usage: queries.py DIR COLUMN, where COLUMN is `names` (the two names) or
`alltext` (names, description, maker, model and techniques). The mix is the
one in cli/src/bench.rs (QUERIES): Chinese, English, filtered (Zhejiang and
Anhui, vouchers accepted) and faceted (counts by city, category and
institution). Each word of a query must occur in the column, as a literal
ILIKE pattern, so that the plan is made with the constant and the trigram
index is used; hits are ranked by the names' trigram similarity to the query.
"""

import sys
from pathlib import Path

QUERIES = [
    ("zh", "电子显微镜"),
    ("zh", "核磁共振波谱仪"),
    ("zh", "比表面"),
    ("zh", "透射电镜 200kV"),
    ("en", "TEM"),
    ("en", "NMR"),
    ("en", "microscope"),
    ("en", "x-ray diffractometer"),
    ("filtered", "显微镜"),
    ("filtered", "spectrometer"),
    ("faceted", "质谱"),
    ("faceted", "BET"),
]


def script(kind: str, query: str, column: str) -> str:
    assert "'" not in query and "%" not in query and "_" not in query
    words = query.lower().split()
    where = " AND ".join(f"{column} ILIKE '%{w}%'" for w in words)
    if kind == "filtered":
        where += " AND province IN ('Zhejiang', 'Anhui') AND accepts_vouchers"
    sql = (
        f"SELECT id, name_zh, name_en, city, institution, price_external_fen,"
        f" similarity(names, '{query}') AS score\n"
        f"FROM instruments WHERE {where}\nORDER BY score DESC, id LIMIT 20;\n"
    )
    if kind == "faceted":
        sql += (
            f"SELECT city, category, institution, count(*) FROM instruments WHERE {where}\n"
            "GROUP BY GROUPING SETS ((city), (category), (institution));\n"
        )
    return f"-- {kind}: {query}\n{sql}"


def main() -> None:
    out, column = Path(sys.argv[1]), sys.argv[2]
    assert column in ("names", "alltext")
    out.mkdir(parents=True, exist_ok=True)
    for i, (kind, query) in enumerate(QUERIES):
        (out / f"{column}-{i:02}.sql").write_text(script(kind, query, column))


if __name__ == "__main__":
    main()
