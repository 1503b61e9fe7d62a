"""Convert Jane Austen's six novels from the Debian package `r-cran-janeaustenr` into the
embedded default corpus `collapse/corpora/austen.jsonl.gz` (one JSON row per chapter).

The text is public domain (Project Gutenberg transcriptions). We only run this once and commit
its output; it is kept so that anyone can re-derive the corpus byte for byte:

    mkdir -p /tmp/ja && cd /tmp/ja && apt-get download r-cran-janeaustenr && dpkg-deb -x *.deb x
    python scripts/build_austen_corpus.py /tmp/ja/x/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb

R's lazy-load database (`.rdb`) is a sequence of blobs, each a 4-byte big-endian uncompressed
length followed by a zlib stream holding one object in R's XDR serialization. Each novel is a
character vector (STRSXP) of lines, which is all this parser understands.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import sys
import zlib
from pathlib import Path

STRSXP, CHARSXP = 16, 9
OUT = Path(__file__).resolve().parents[1] / "collapse" / "corpora" / "austen.jsonl.gz"
# The first line of each vector is the title; map it to a short stable book id.
BOOKS = {
    "SENSE AND SENSIBILITY": "sense_and_sensibility",
    "PRIDE AND PREJUDICE": "pride_and_prejudice",
    "MANSFIELD PARK": "mansfield_park",
    "EMMA": "emma",
    "NORTHANGER ABBEY": "northanger_abbey",
    "PERSUASION": "persuasion",
}
CHAPTER = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\b", re.IGNORECASE)


def read_blobs(rdb: bytes):
    pos = 0
    while pos < len(rdb):
        (expected,) = struct.unpack(">I", rdb[pos : pos + 4])
        inflater = zlib.decompressobj()
        raw = inflater.decompress(rdb[pos + 4 :])
        if len(raw) != expected:
            raise ValueError(f"blob at byte {pos}: expected {expected} bytes, got {len(raw)}")
        pos = len(rdb) - len(inflater.unused_data)
        yield raw


def parse_strsxp(raw: bytes) -> list[str]:
    if raw[:2] != b"X\n":
        raise ValueError("not an XDR-serialized R object")
    version = struct.unpack(">i", raw[2:6])[0]
    pos = 14  # magic, version, writer version, min reader version
    if version == 3:  # native encoding name follows
        (n,) = struct.unpack(">i", raw[pos : pos + 4])
        pos += 4 + n
    (flags,) = struct.unpack(">i", raw[pos : pos + 4])
    if flags & 0xFF != STRSXP:
        raise ValueError(f"expected a character vector, got SEXP type {flags & 0xFF}")
    (length,) = struct.unpack(">i", raw[pos + 4 : pos + 8])
    pos += 8
    lines = []
    for _ in range(length):
        flags, n = struct.unpack(">ii", raw[pos : pos + 8])
        pos += 8
        if flags & 0xFF != CHARSXP:
            raise ValueError(f"expected CHARSXP, got type {flags & 0xFF}")
        if n == -1:  # NA_character_
            lines.append("")
            continue
        lines.append(raw[pos : pos + n].decode("utf-8"))
        pos += n
    return lines


def chapters(lines: list[str]):
    """Yield (chapter_number, text) with paragraphs joined by blank lines."""
    current: list[str] | None = None
    number = 0
    for line in lines:
        if CHAPTER.match(line):
            if current:
                yield number, current
            number += 1
            current = []
            continue
        if current is not None:
            current.append(line.strip())
    if current:
        yield number, current


def to_text(lines: list[str]) -> str:
    paragraphs, para = [], []
    for line in lines + [""]:
        if line:
            para.append(line)
        elif para:
            paragraphs.append(" ".join(para))
            para = []
    return "\n\n".join(paragraphs)


def main(rdb_path: str) -> None:
    rows = []
    for raw in read_blobs(Path(rdb_path).read_bytes()):
        lines = parse_strsxp(raw)
        title = lines[0].strip().upper()
        book = BOOKS.get(title)
        if book is None:
            raise ValueError(f"unknown title line {lines[0]!r}")
        for number, chapter_lines in chapters(lines):
            text = to_text(chapter_lines)
            if len(text) > 200:  # skip empty volume separators
                rows.append({"id": f"{book}/{number:03d}", "book": book, "chapter": number, "text": text})
    rows.sort(key=lambda r: r["id"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the gzip bytes reproducible.
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    words = sum(len(r["text"].split()) for r in rows)
    print(f"wrote {len(rows)} chapters, {words} words to {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
