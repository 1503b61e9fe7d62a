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

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = datasets.concatenate_datasets(list(ds.values()))
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
    ranked = sorted(docs, key=lambda d: hashlib.sha256(f"collapse-split:{d.id}".encode()).hexdigest())
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
