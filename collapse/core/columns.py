"""metrics.jsonl as columns: what a reader of a whole study works from, at any size.

metrics.jsonl has one JSON object per finished unit. A reader of a 10^5-unit study that parses it
into dicts pays about a second of CPU and some 300 MB for them, although a curve wants columns:
one array of a metric over the rows. `MetricsTable` is those columns, built in one streaming pass
over the file (its lines are parsed one at a time and never held together):

    numbers[key]  float64, for a key whose every value is a JSON number (and which were integers)
    labels[key]   str, for a key whose every value is a string
    objects[key]  the value's JSON text, for anything else (lists, null, mixed types, booleans)
    present[key]  which rows have the key (a row's NaN is a value; a missing key is not)

Row i of every column is line i of the file. `rows()` turns the table back into the file's dicts,
exactly (`tests/test_columns.py`).

`metrics.columns.npz` (`COLUMNS_FILE`, written by the run directory when it rewrites metrics.jsonl)
stores a table with the size and SHA-1 of the metrics.jsonl bytes it mirrors; `load_table` uses it
when those bytes are still the file's first bytes and parses only what was appended since, so
`collapse status` on a 10^5-unit study reads the study in a fraction of a second. Saved without
pickles (`allow_pickle=False` on load).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

COLUMNS_FILE = "metrics.columns.npz"
COLUMNS_VERSION = 1
_NUMBER, _LABEL, _OBJECT = "n", "s", "j"


def _kind(v) -> str:
    if isinstance(v, bool) or v is None:
        return _OBJECT
    if isinstance(v, (int, float)):
        return _NUMBER
    return _LABEL if isinstance(v, str) else _OBJECT


class MetricsTable:
    """Columns of metrics rows (see the module docstring). Build with `from_rows` or `read_jsonl`."""

    def __init__(self, n: int, columns: dict[str, tuple]):
        self.n = n
        self._columns = columns  # key -> (kind, values [n], present [n], is an integer [n] or None)

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> MetricsTable:
        at: dict[str, list[int]] = {}
        values: dict[str, list] = {}
        n = 0
        for row in rows:
            for key, v in row.items():
                if key not in at:
                    at[key], values[key] = [], []
                at[key].append(n)
                values[key].append(v)
            n += 1
        columns = {}
        for key, vs in values.items():
            kinds = {_kind(v) for v in vs}
            kind = kinds.pop() if len(kinds) == 1 else _OBJECT
            present = np.zeros(n, bool)
            present[at[key]] = True
            integer = None
            if kind == _NUMBER:
                col = np.full(n, np.nan)
                col[at[key]] = vs
                integer = np.zeros(n, bool)
                integer[at[key]] = [type(v) is int for v in vs]
            else:
                col = np.full(n, "", dtype=object)
                col[at[key]] = vs if kind == _LABEL else [json.dumps(v, sort_keys=True) for v in vs]
                col = col.astype(str)
            columns[key] = (kind, col, present, integer)
        return cls(n, columns)

    @classmethod
    def read_jsonl(cls, path: str | Path, start: int = 0) -> MetricsTable:
        """The lines of a metrics.jsonl from byte `start` on (0: all), one at a time. A last line
        without its newline is an append cut short (a killed writer) and is left out."""
        return cls.from_rows(_lines(Path(path), start))

    @classmethod
    def concat(cls, first: MetricsTable, then: MetricsTable) -> MetricsTable:
        if then.n == 0:
            return first
        if first.n == 0:
            return then
        out, n = {}, first.n + then.n
        for key in {**first._columns, **then._columns}:
            a, b = first._columns.get(key), then._columns.get(key)
            kinds = {c[0] for c in (a, b) if c is not None}
            if len(kinds) > 1:  # one side numbers, the other strings: back to the rows' JSON
                rows = first.rows() + then.rows()
                return cls.from_rows(rows)
            kind = kinds.pop()
            parts, present, integer = [], [], []
            for side, size in ((a, first.n), (b, then.n)):
                if side is None:
                    parts.append(np.full(size, np.nan) if kind == _NUMBER else np.full(size, ""))
                    present.append(np.zeros(size, bool))
                    integer.append(np.zeros(size, bool))
                else:
                    parts.append(side[1])
                    present.append(side[2])
                    integer.append(side[3] if kind == _NUMBER else np.zeros(size, bool))
            out[key] = (
                kind,
                np.concatenate(parts),
                np.concatenate(present),
                np.concatenate(integer) if kind == _NUMBER else None,
            )
        return cls(n, out)

    # -- reading -----------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self._columns)

    def __contains__(self, key: str) -> bool:
        return key in self._columns

    def __len__(self) -> int:
        return self.n

    def is_number(self, key: str) -> bool:
        """Whether `key`'s every value is a JSON number (its column is `numeric`)."""
        col = self._columns.get(key)
        return col is not None and col[0] == _NUMBER

    def numeric(self, key: str) -> np.ndarray:
        """A number column as float64 (NaN where a row lacks it); all-NaN for a key not a number."""
        col = self._columns.get(key)
        if col is None or col[0] != _NUMBER:
            return np.full(self.n, np.nan)
        return col[1]

    def labels(self, key: str) -> np.ndarray:
        """A string column ('' where a row lacks it; all '' for a key that is not strings)."""
        col = self._columns.get(key)
        if col is None or col[0] != _LABEL:
            return np.full(self.n, "")
        return col[1]

    def present(self, key: str) -> np.ndarray:
        col = self._columns.get(key)
        return np.zeros(self.n, bool) if col is None else col[2]

    def _value(self, key: str, col: tuple, i: int):
        kind, values, _, integer = col
        if kind == _NUMBER:
            return int(values[i]) if integer[i] else float(values[i])
        return str(values[i]) if kind == _LABEL else json.loads(values[i])

    def row(self, i: int, keys: Iterable[str] | None = None) -> dict:
        cols = self._columns if keys is None else {k: self._columns[k] for k in keys if k in self._columns}
        return {k: self._value(k, c, i) for k, c in cols.items() if c[2][i]}

    def rows(self, keys: Iterable[str] | None = None) -> list[dict]:
        """The rows as the file has them (`keys`: only these keys, for a reader that needs a few)."""
        keys = list(self._columns if keys is None else [k for k in keys if k in self._columns])
        plain = []
        for k in keys:
            kind, values, present, integer = self._columns[k]
            if kind == _NUMBER:
                out = values.tolist()
                if integer.any():
                    out = [int(v) if i else v for v, i in zip(out, integer.tolist())]
            elif kind == _LABEL:
                out = values.tolist()
            else:
                out = [json.loads(v) if p else None for v, p in zip(values.tolist(), present.tolist())]
            plain.append((k, out, present.tolist()))
        return [{k: out[i] for k, out, present in plain if present[i]} for i in range(self.n)]

    # -- the file ----------------------------------------------------------------------------------
    def to_npz(self, source_bytes: int, source_sha1: str) -> bytes:
        """The npz bytes of this table, mirroring the first `source_bytes` bytes of metrics.jsonl."""
        meta = {
            "version": COLUMNS_VERSION,
            "rows": self.n,
            "source_bytes": source_bytes,
            "source_sha1": source_sha1,
            "kinds": {k: c[0] for k, c in self._columns.items()},
            "order": list(self._columns),
        }
        arrays = {"meta": np.array(json.dumps(meta))}
        for i, (_, values, present, integer) in enumerate(self._columns.values()):
            arrays[f"v{i}"], arrays[f"p{i}"] = values, present
            if integer is not None:
                arrays[f"i{i}"] = integer
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()


def _lines(path: Path, start: int):
    if not path.is_file():
        return
    with open(path, "rb") as f:
        f.seek(start)
        for line in f:
            if not line.endswith(b"\n"):
                return  # an append cut short
            if line.strip():
                yield json.loads(line)


def prefix_sha1(path: Path, size: int) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        left = size
        while left > 0:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def load_table(jsonl: Path, columns: Path) -> MetricsTable:
    """metrics.jsonl's rows as a table: from `columns` where it mirrors the file's first bytes (then
    only the lines appended after them are parsed), else from the whole file."""
    try:
        size = os.path.getsize(jsonl)
    except OSError:
        return MetricsTable.from_rows([])
    try:
        with np.load(columns, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != COLUMNS_VERSION or meta["source_bytes"] > size:
                raise ValueError("stale")
            if prefix_sha1(jsonl, meta["source_bytes"]) != meta["source_sha1"]:
                raise ValueError("stale")
            cols = {}
            for i, key in enumerate(meta["order"]):
                kind = meta["kinds"][key]
                cols[key] = (kind, z[f"v{i}"], z[f"p{i}"], z[f"i{i}"] if kind == _NUMBER else None)
        table = MetricsTable(meta["rows"], cols)
        return MetricsTable.concat(table, MetricsTable.read_jsonl(jsonl, meta["source_bytes"]))
    except (OSError, ValueError, KeyError, TypeError):  # none yet, stale or damaged: the file is the truth
        return MetricsTable.read_jsonl(jsonl)
