"""Real text: load documents from the embedded corpus, a text folder, a JSONL file or a `datasets`
directory, and split them into train / eval / prompt pools with no document in two pools."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.config import ConfigError

EMBEDDED = {"austen": "austen.jsonl.gz"}
SPLITS = ("train", "eval", "prompt")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def load_documents(source: str, text_field: str = "text") -> list[Document]:
    if source in EMBEDDED:
        ref = resources.files("collapse.corpora").joinpath(EMBEDDED[source])
        with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            return _from_rows((json.loads(line) for line in f), text_field, source)
    path = Path(source)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        import datasets

        ds = datasets.load_from_disk(str(path))  # one Dataset: a DatasetDict keeps its splits (load_pools)
        if text_field not in ds.column_names:
            raise ConfigError(
                f"data.source {path}: no column `{text_field}` (columns: {ds.column_names}); set data.text_field"
            )
        return _from_rows(iter(ds), text_field, str(path))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ConfigError(f"data.source {path}: folder holds no *.txt files")
        return [Document(str(p.relative_to(path)), p.read_text(encoding="utf-8", errors="replace")) for p in files]
    if path.suffix in (".jsonl", ".gz") and path.is_file():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows = []
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise ConfigError(f"data.source {path}: line {i + 1} is not JSON") from None
            return _from_rows(iter(rows), text_field, str(path))
    raise ConfigError(f"data.source {source}: not `austen`, a .txt folder, a .jsonl file or a datasets dir")


def load_pools(data) -> dict[str, list[Document]]:
    """The train / eval / prompt pools of `data` (a DataConfig). A `datasets` DatasetDict keeps its
    published splits (`data.splits` says which feeds which pool); any other source is one list of
    documents, split by `split_documents`. Line-based rows (`data.join_lines`) become documents
    first, inside each published split, so no document is cut across pools."""
    published = _published_splits(data.source, data.text_field)
    if published is None:
        docs = load_documents(data.source, data.text_field)
        if data.join_lines:
            docs = join_lines(docs, data.join_lines, data.source)
        return split_documents(docs, data.eval_fraction, data.prompt_fraction)
    if data.join_lines:
        published = {
            name: join_lines(docs, data.join_lines, f"{data.source}[{name}]") for name, docs in published.items()
        }
    mapping = dict(data.splits) if data.splits else _default_splits(published, data.source)
    for pool, name in mapping.items():
        if name not in published:
            raise ConfigError(
                f"data.splits: {pool} -> `{name}`, but {data.source} has the splits {sorted(published)}; fix it"
            )
    pools = {pool: list(published[name]) for pool, name in mapping.items()}
    if "prompt" not in pools:  # carved from train, by the same hash ranking as split_documents
        ranked = sorted(pools["train"], key=_rank)
        n_prompt = round(data.prompt_fraction * len(ranked))
        prompt_ids = {d.id for d in ranked[:n_prompt]}
        pools["prompt"] = [d for d in pools["train"] if d.id in prompt_ids]
        pools["train"] = [d for d in pools["train"] if d.id not in prompt_ids]
    for pool in SPLITS:
        if not pools.get(pool) and pool != "prompt":
            raise ConfigError(f"data.source {data.source}: the {pool} pool is empty; check data.splits")
    return pools


def _published_splits(source: str, text_field: str) -> dict[str, list[Document]] | None:
    """A DatasetDict's splits as documents (ids prefixed by the split: unique across splits)."""
    path = Path(source)
    if not (path.is_dir() and (path / "dataset_dict.json").exists()):
        return None
    import datasets

    dd = datasets.load_from_disk(str(path))
    out = {}
    for name, ds in dd.items():
        if text_field not in ds.column_names:
            raise ConfigError(
                f"data.source {path}: split `{name}` has no column `{text_field}` (columns: {ds.column_names}); "
                "set data.text_field"
            )
        out[name] = [Document(f"{name}/{i}", row[text_field]) for i, row in enumerate(ds) if row[text_field]]
    return out


def _default_splits(published: dict, source: str) -> dict[str, str]:
    held_out = next((n for n in ("validation", "valid", "dev", "test") if n in published), None)
    if "train" not in published or held_out is None:
        raise ConfigError(
            f"data.source {source}: splits {sorted(published)}; set data.splits, e.g. {{train: <split>, eval: <split>}}"
        )
    return {"train": "train", "eval": held_out}


def join_lines(docs: list[Document], how: str, where: str) -> list[Document]:
    """Consecutive line rows joined into documents. `wikitext`: an article starts at a top-level
    heading line ` = Title = ` (sub-headings are ` = = ... = = `); blank lines stay inside."""
    import re

    heading = re.compile(r"^ = [^=].* = \s*$")
    articles: list[list[Document]] = []
    for line in docs:
        if heading.match(line.text) or not articles:
            articles.append([])
        articles[-1].append(line)
    joined = [
        Document(lines[0].id, "".join(d.text if d.text.endswith("\n") else d.text + "\n" for d in lines))
        for lines in articles
    ]
    joined = [d for d in joined if d.text.strip()]
    if len(joined) < 1:
        raise ConfigError(f"data.source {where}: data.join_lines `{how}` found no document")
    return joined


def _rank(d: Document) -> str:
    return hashlib.sha256(f"collapse-split:{d.id}".encode()).hexdigest()


def _from_rows(rows, text_field: str, where: str) -> list[Document]:
    docs = []
    for i, row in enumerate(rows):
        if text_field not in row:
            raise ConfigError(f"data.source {where}: row {i} has no field `{text_field}`; set data.text_field")
        text = row[text_field]
        if isinstance(text, str) and text.strip():
            docs.append(Document(str(row.get("id", i)), text))
    if len(docs) < 3:
        raise ConfigError(f"data.source {where}: needs at least 3 non-empty documents (found {len(docs)})")
    return docs


def split_documents(docs: list[Document], eval_fraction: float, prompt_fraction: float) -> dict[str, list[Document]]:
    """Rank documents by a hash of their id (not the study seed: every study on a corpus shares
    one held-out set, so their numbers compare) and cut the ranking into the three pools."""
    ranked = sorted(docs, key=_rank)
    n = len(ranked)
    n_eval = max(1, round(eval_fraction * n))
    n_prompt = round(prompt_fraction * n)
    if n - n_eval - n_prompt < 1:
        raise ConfigError("data.eval_fraction + data.prompt_fraction leave no training documents")
    split = {
        "eval": ranked[:n_eval],
        "prompt": ranked[n_eval : n_eval + n_prompt],
        "train": ranked[n_eval + n_prompt :],
    }
    # Keep corpus order inside each pool (chapters of a book stay in sequence).
    order = {d.id: i for i, d in enumerate(docs)}
    return {k: sorted(v, key=lambda d: order[d.id]) for k, v in split.items()}
