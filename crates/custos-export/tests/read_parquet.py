"""Reads custos Parquet export files with pyarrow and DuckDB, independently of custos.

Prints one JSON document: every row as pyarrow reads it (times as RFC 3339 with milliseconds,
as custos writes them in JSONL), and DuckDB's counts over the same files.
"""

import json
import sys

import duckdb
import pyarrow.parquet as pq


def millis(at):
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def main(files):
    rows = []
    for path in files:
        for row in pq.read_table(path).to_pylist():
            for message in row["messages"]:
                message["at"] = millis(message["at"])
            for feedback in row["feedback"]:
                feedback["at"] = millis(feedback["at"])
            rows.append(row)
    count, messages = duckdb.sql(
        "SELECT count(*), coalesce(sum(len(messages)), 0) FROM read_parquet($files)",
        params={"files": files},
    ).fetchall()[0]
    json.dump({"pyarrow": rows, "duckdb": {"rows": count, "messages": int(messages)}}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
