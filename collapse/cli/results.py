"""Results as data: a study opened read-only, for notebooks and scripts.

    import collapse

    study = collapse.open_study("runs/debug")        # a path, or file://, s3://, gs://, az:// URI
    df = study.metrics()                              # one row per unit: grid axes, metrics, _lo/_hi bounds
    values = study.per_unit("c0.50-replace-s0", 0)   # per held-out sequence / per sample arrays
    corpus = study.samples("c0.50-replace-s0", 2)    # the corpus generation 2 sampled, with provenance
    model = study.model("c0.50-replace-s0", 2)       # a transformers AutoModelForCausalLM

Every generation reads the same way, generation 0 included (it is shared by the lineages with the
same seed, model, data and training; the study resolves which). A study at a URI is read through
the local cache that `collapse report` uses: metrics and per-unit values on open, a unit's weights
or corpus when asked for. Nothing here writes into a study.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from ..core import metrics as M
from ..core.config import Config, ConfigError
from ..core.plan import LineageSpec
from ..core.rundir import CORPUS_DIR, MODEL_DIR, STUDY_FILE, RunDir, read_metrics
from ..core.storage import is_remote, local_run_dir, pull_into

IDENTITY_COLUMNS = (M.LINEAGE, M.REGIME, M.CONTAMINATION, M.SEED)  # then the extra grid axes, then GENERATION


class Study:
    """One study's results. `config` is the resolved config (`collapse.core.config.Config`)."""

    def __init__(self, where: str | Path):
        self.where = str(where)
        self.root = local_run_dir(self.where, metadata_only=True) if is_remote(self.where) else Path(where).absolute()
        self.run = RunDir(self.root)
        self.config: Config = self.run.load_config()  # one line (ConfigError) if this is not a study

    def __repr__(self) -> str:
        return f"Study({self.where!r}: {self.config.study.name}, {len(self.lineages)} lineages)"

    @cached_property
    def specs(self) -> dict[str, LineageSpec]:
        return {s.name: s for s in self.run.lineages(self.config)}

    @property
    def lineages(self) -> list[str]:
        return list(self.specs)

    @property
    def axes(self) -> list[str]:
        """The grid's extra axes (config keys such as `mitigation.filter`), beyond regime, c and seed."""
        return sorted({k for s in self.specs.values() for k, _ in s.extra})

    def metrics(self):
        """A pandas DataFrame with one row per finished unit, as `metrics.jsonl` has them: the grid
        coordinates first (lineage, regime, contamination, seed, the extra axes, generation; numbers
        as numbers), then every metric with its 95% interval as `<metric>_lo` / `<metric>_hi`
        beside it where the row has one. A metric a unit did not compute is NaN."""
        import pandas as pd

        rows = read_metrics(self.root)
        frame = pd.DataFrame(rows)
        first = [c for c in (*IDENTITY_COLUMNS, *self.axes, M.GENERATION) if c in frame.columns]
        rest = sorted(c for c in frame.columns if c not in first)
        ordered = []
        for c in rest:
            if c.endswith((M.CI_LO, M.CI_HI)) and c.rsplit("_", 1)[0] in frame.columns:
                continue  # placed after its metric
            ordered += [c] + [c + s for s in (M.CI_LO, M.CI_HI) if c + s in frame.columns]
        frame = frame[first + ordered]
        for column, kind in ((M.SEED, "int64"), (M.GENERATION, "int64"), (M.CONTAMINATION, "float64")):
            if column in frame.columns:
                frame[column] = frame[column].astype(kind)
        return frame

    def _spec(self, lineage: str) -> LineageSpec:
        if lineage not in self.specs:
            raise KeyError(f"{self.where}: no lineage {lineage!r}; lineages: {', '.join(self.lineages[:8])} ...")
        return self.specs[lineage]

    def unit_dir(self, lineage: str, generation: int) -> Path:
        """Where generation `generation` of `lineage` keeps its files (generation 0: the shared unit)."""
        spec = self._spec(lineage)
        if not self.run.unit_done(lineage, generation):
            raise FileNotFoundError(f"{self.where}: generation {generation} of {lineage} is not done")
        return self.run.artifacts_dir(lineage, spec.gen0_key, generation)

    def per_unit(self, lineage: str, generation: int) -> dict[str, Any]:
        """The per-sequence and per-sample values behind a unit's row (`metrics.PAIRED`): numpy arrays
        by name, e.g. `real_nll` (mean token NLL of each held-out sequence, the same sequences in
        every unit), `samples_self_bleu` (per sample). Empty for a family that saves none."""
        self.unit_dir(lineage, generation)  # raises if not done
        return self.run.per_unit(self._spec(lineage), generation) or {}

    def _fetched(self, lineage: str, generation: int, name: str) -> Path:
        path = self.unit_dir(lineage, generation) / name
        if is_remote(self.where):
            pull_into(self.root, path.relative_to(self.root).as_posix())
        if not path.exists():
            raise FileNotFoundError(f"{self.where}: generation {generation} of {lineage} has no {name}")
        return path

    def samples(self, lineage: str, generation: int):
        """The corpus generation `generation` sampled for the next one, as a `datasets.Dataset`:
        `input_ids`, `text` and the provenance columns (lineage, generation, parent_checkpoint,
        sample_index, prompt_id, decoding settings, ...). The last generation samples none."""
        import datasets

        return datasets.load_from_disk(str(self._fetched(lineage, generation, CORPUS_DIR)))

    def model(self, lineage: str, generation: int, **kwargs):
        """The generation's weights: `AutoModelForCausalLM.from_pretrained` (kwargs passed on)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(self._fetched(lineage, generation, MODEL_DIR)), **kwargs)

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.run.tokenizer_dir))

    @cached_property
    def provenance(self) -> dict[str, Any]:
        """What makes the study what it is: its name, uid, scientific identity version, code and
        library versions (manifest.json), and the checksums of its prepared inputs."""
        manifest = self.run.manifest()
        files = self.run.prepared_inputs()
        return {
            "study": self.config.study.name,
            "uid": manifest.get("uid"),
            "identity": manifest.get("identity"),
            "created": manifest.get("created"),
            "git_commit": manifest.get("git_commit"),
            "versions": manifest.get("versions", {}),
            "inputs": {name: record.get("sha256") for name, record in sorted(files.items())},
        }

    def heldout(self) -> dict[str, Any]:
        """What the per-sequence values are measured on: the held-out pool's and the tokenizer's
        checksums and how many of its sequences are scored. Two studies with the same values score
        the same sequences, so their per-sequence values pair."""
        inputs = self.provenance["inputs"]
        return {
            "data/eval.npy": inputs.get("data/eval.npy"),
            "tokenizer": inputs.get("tokenizer/tokenizer.json"),
            "data.eval_sequences": self.config.data.eval_sequences,
            "data.seq_len": self.config.data.seq_len,
        }


def open_study(where: str | Path) -> Study:
    """Open a study read-only: a run directory, or its URI (file://, s3://, gs://, az://)."""
    if not is_remote(str(where)) and not (Path(where) / STUDY_FILE).is_file():
        raise ConfigError(f"{where}: not a study directory (no study.yaml); pass the --out of `collapse run`")
    return Study(where)


EXPORT_FORMATS = ("parquet", "csv")
PARQUET_METADATA_KEY = b"collapse"  # the study's provenance and resolved config, as JSON


def export_metrics(study: Study, fmt: str, out: str | Path) -> Path:
    """The metrics table (`Study.metrics()`) as Parquet (the study's identity, provenance and
    resolved config in the file's metadata under `collapse`) or CSV, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..core.checkpoint import write_bytes_atomic, write_text_atomic

    out = Path(out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist; create it or pick another path")
    frame = study.metrics()
    if fmt == "csv":
        write_text_atomic(out, frame.to_csv(index=False))
        return out
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {"provenance": study.provenance, "config": study.config.to_dict(), "source": study.where}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PARQUET_METADATA_KEY: json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(out, sink.getvalue().to_pybytes())
    return out
