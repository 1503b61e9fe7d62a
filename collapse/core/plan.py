"""Expand a study's grid into lineages; find the generation-0 units lineages share."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .seeding import short_hash

# -- sizes: how many rows each generation trains on and samples ------------------------------------


def sequences_per_generation(tokens_per_generation: int, seq_len: int) -> int:
    return max(1, tokens_per_generation // seq_len)


def rows_per_generation(cfg: Config) -> int:
    """n, the rows each generation's block D_k holds: sequences for a language model, samples M
    for a theory family."""
    if cfg.model.family != "lm":
        return cfg.theory.samples
    return sequences_per_generation(cfg.data.tokens_per_generation, cfg.data.seq_len)


def synthetic_rows_needed(contamination: float, n_seqs: int) -> int:
    return int(round(contamination * n_seqs))


def candidates_per_row(cfg: Config) -> float:
    """Synthetic rows sampled per row trained on (`verify` samples extra and keeps the best)."""
    return 1.0 / cfg.mitigation.verify_keep if cfg.mitigation.filter == "verify" else 1.0


def corpus_size(cfg: Config, synthetic_rows: int) -> int:
    """Rows a generation samples so the next can take `synthetic_rows` after selection."""
    return int(math.ceil(synthetic_rows * candidates_per_row(cfg))) if synthetic_rows else 0


@dataclass(frozen=True)
class LineageSpec:
    name: str
    index: int
    contamination: float
    regime: str
    seed: int
    extra: tuple[tuple[str, Any], ...] = ()
    gen0_key: str = ""
    config: Config = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def identity(self) -> dict[str, Any]:
        """The grid coordinates of this lineage (the identity columns of metrics.jsonl)."""
        return {
            "lineage": self.name,
            "contamination": self.contamination,
            "regime": self.regime,
            "seed": self.seed,
            **dict(self.extra),
        }

    @property
    def corpus_rows(self) -> int:
        """Synthetic rows each generation samples for the next one."""
        return corpus_size(self.config, synthetic_rows_needed(self.contamination, rows_per_generation(self.config)))


def _fmt(value: Any) -> str:
    return str(value).replace("/", "_").replace(" ", "")


# Above this many lineages, views of a study (the live board, `status`, the printed and markdown
# tables) show one row per grid cell, aggregated over its seeds: 100+ seeds per cell stay readable.
AGGREGATE_ABOVE = 24


def cell_name(lineage: str) -> str:
    """A lineage's grid cell: its name without the seed (`c1.00-replace-s7` -> `c1.00-replace`).
    Views of studies with many seeds aggregate over it."""
    return re.sub(r"-s\d+(?=-|$)", "", lineage, count=1)


def lineage_name(c: float, regime: str, seed: int, extra: dict[str, Any]) -> str:
    parts = [f"c{c:.2f}", regime, f"s{seed}"] + [f"{k.split('.')[-1]}={_fmt(v)}" for k, v in extra.items()]
    return "-".join(parts)


# Settings that say how a study executes, not what it computes: the same study on another cluster
# layout (engine, workers, micro-batches, checkpoint interval, compiled decode, scoring batch) must
# draw the same seeds and give the same numbers up to float noise, so they never enter the
# generation-0 identity (from which every seed of a generation-0 unit derives). Precision is one:
# `auto` resolves per machine, and bf16 against fp32 of one study is then a paired comparison of the
# same draws (bf16 noise; docs/precision.md).
EXECUTION_ONLY = (
    "train.engine", "train.workers", "train.deepspeed", "train.micro_batch_size", "train.checkpoint_every",
    "sample.compile", "eval.batch_size", "train.precision", "sample.precision", "eval.precision",
)  # fmt: skip
# Scientific keys added after identity 2: left out of the identity while at their default, so that
# run directories made before them (whose study.yaml lacks them) resume onto the same units.
ADDED_LATER = {"data.splits": None, "data.join_lines": None, "data.separator": None, "data.start_token": None}
IDENTITY_VERSION = 2  # 1: studies made before execution settings left the identity (they keep it)


_SEED_SLOT = "\u0000seed\u0000"  # stands for the seed in a serialized identity; never a config value


def gen0_key(cfg: Config, seed: int, identity: int = IDENTITY_VERSION) -> str:
    """Generation 0 trains on real data only, so it depends on the seed, data, model, training,
    sampling and evaluation settings, but not on contamination or regime: lineages that agree on
    the rest share one generation 0. `identity` 1 is the scheme of earlier releases (execution
    settings included), kept so their run directories resume onto the same units."""
    return gen0_key_of(gen0_template(cfg, identity), seed)


def gen0_key_of(template: str, seed: int) -> str:
    """The key from `gen0_template`'s serialized identity: the seed is the only part that varies
    across a grid's seeds, so a study of 10^4 lineages serializes its config once, not per lineage."""
    return short_hash(template.replace(json.dumps(_SEED_SLOT), str(int(seed))))


def gen0_template(cfg: Config, identity: int = IDENTITY_VERSION) -> str:
    """The generation-0 identity serialized with a slot for the seed (json of an int is its str)."""
    model = dataclasses.asdict(cfg.model)
    model["init"] = "base" if cfg.model.init == "base" else "scratch"  # gen 0 starts from base or scratch
    if model["init"] != "base":
        model["base_path"] = None
    mt = cfg.mitigation  # a watermark changes what generation 0 samples; other filters act later
    watermark = [mt.watermark_gamma, mt.watermark_delta] if mt.filter == "watermark" else None
    blob = {
        "study_seed": cfg.study.seed,
        "seed": _SEED_SLOT,
        "model": model,
        "watermark": watermark,
        **{k: dataclasses.asdict(getattr(cfg, k)) for k in ("data", "train", "sample", "eval", "theory")},
    }
    if identity >= 2:
        for key in EXECUTION_ONLY:
            section, name = key.split(".")
            del blob[section][name]
    for key, default in ADDED_LATER.items():  # at its default, a later key leaves older studies' keys alone
        section, name = key.split(".")
        if blob[section].get(name) == default:
            del blob[section][name]
    return json.dumps(blob, sort_keys=True)


def expand(cfg: Config, search_points: list[dict] | tuple = (), identity: int = IDENTITY_VERSION) -> list[LineageSpec]:
    """The study's lineages: the grid's product, plus the lineages a contamination search added
    (`search_points`: {contamination, regime, seed, extra}, in the order they were decided)."""
    g = cfg.grid
    extra_keys = list(g.extra)
    axes = [g.contamination, g.regime, g.seed] + [g.extra[k] for k in extra_keys]
    combos = list(itertools.product(*axes))
    for p in search_points:
        combos.append(
            (p["contamination"], p["regime"], p["seed"], *(dict(p.get("extra", {})).get(k) for k in extra_keys))
        )
    specs, seen = [], set()
    templates: dict[tuple, tuple[Config, str]] = {}  # extra axes -> (their config, its gen-0 template)
    for values in combos:
        c, regime, seed, *rest = values
        extra = dict(zip(extra_keys, rest))
        name = lineage_name(c, regime, seed, extra)
        if name in seen:  # duplicated grid values: identical lineages never run twice
            continue
        seen.add(name)
        axes_key = tuple(extra.items())
        if axes_key not in templates:
            lineage_cfg = cfg.replace(extra) if extra else cfg
            templates[axes_key] = lineage_cfg, gen0_template(lineage_cfg, identity)
        lineage_cfg, template = templates[axes_key]
        specs.append(
            LineageSpec(
                name,
                len(specs),
                float(c),
                regime,
                int(seed),
                axes_key,
                gen0_key_of(template, seed),
                lineage_cfg,
            )
        )
    return specs


def spec_for_point(cfg: Config, point: dict, index: int, identity: int = IDENTITY_VERSION) -> LineageSpec:
    """The lineage a contamination search launches (same construction as a grid lineage)."""
    extra = {k: v for k, v in point.get("extra", [])}
    lineage_cfg = cfg.replace(extra) if extra else cfg
    c, regime, seed = float(point["contamination"]), point["regime"], int(point["seed"])
    return LineageSpec(
        lineage_name(c, regime, seed, extra),
        index,
        c,
        regime,
        seed,
        tuple(extra.items()),
        gen0_key(lineage_cfg, seed, identity),
        lineage_cfg,
    )


def gen0_groups(specs: list[LineageSpec]) -> dict[str, list[LineageSpec]]:
    groups: dict[str, list[LineageSpec]] = {}
    for s in specs:
        groups.setdefault(s.gen0_key, []).append(s)
    return groups


def estimated_cost(spec: LineageSpec, generations: int) -> float:
    """Relative cost of a lineage in sequence-passes, for scheduling: training rows per
    generation (accumulate grows by n each generation) plus sampling (~1.5x a training pass)."""
    t = spec.config.train
    n = rows_per_generation(spec.config)
    train = sum((k + 1) * n if spec.regime == "accumulate" else n for k in range(1, generations + 1))
    return t.epochs * train + 1.5 * spec.corpus_rows * generations
