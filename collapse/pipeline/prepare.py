"""The study's shared inputs, built once before any unit: the tokenizer and the tokenized real
pools (or a theory family's true samples). Idempotent: a resumed study finds them and returns."""

from __future__ import annotations

import logging

from ..core.checkpoint import write_dir_atomic
from ..core.config import Config, ConfigError
from ..core.plan import sequences_per_generation
from ..core.rundir import PREPARED, RunDir
from ..engines.corpus import load_pools
from ..engines.data import RealData, prepare_real_data
from ..engines.tokenizer import load_tokenizer, set_separator, start_token_id, train_bpe
from .theory import prepare_theory_data

log = logging.getLogger(__name__)
STATS_FILE = "stats.json"  # written last into the data dir by both preparers


def prepare(run: RunDir, cfg: Config) -> None:
    """Build what is missing, then record every file (prepared.json), once."""
    _prepare(run, cfg)
    if not (run.root / PREPARED).is_file():
        run.seal_prepared()


def _prepare(run: RunDir, cfg: Config) -> None:
    if cfg.model.family != "lm":
        if not (run.data_dir / STATS_FILE).is_file():
            prepare_theory_data(run.data_dir, cfg)
        return
    if (run.data_dir / STATS_FILE).is_file() and (run.tokenizer_dir / "tokenizer.json").is_file():
        return
    splits = load_pools(cfg.data)
    if cfg.model.init == "base" or "base" in cfg.grid.extra.get("model.init", []):
        tokenizer = load_tokenizer(cfg.model.base_path)
    else:
        tokenizer = train_bpe([d.text for d in splits["train"]], cfg.data.vocab_size)
    start_id, start_warning = start_token_id(tokenizer, cfg.data.start_token)
    for warning in (set_separator(tokenizer, cfg.data.separator), start_warning):
        if warning:
            log.warning(warning)
    prepare_real_data(run.data_dir, tokenizer, splits, cfg.data.seq_len, start_id)
    tokenizer.model_max_length = cfg.data.seq_len  # what every model of the study was trained on
    write_dir_atomic(run.tokenizer_dir, lambda d: tokenizer.save_pretrained(str(d)))
    real = RealData.load(run.data_dir)
    if len(real.eval) == 0:
        raise ConfigError(
            f"data.source {cfg.data.source}: the eval split has no full sequence of data.seq_len tokens; raise "
            "data.eval_fraction"
        )
    need = sequences_per_generation(cfg.data.tokens_per_generation, cfg.data.seq_len)
    if len(real.train) < need:
        log.warning("train pool has %d sequences < %d per generation: real rows repeat", len(real.train), need)
