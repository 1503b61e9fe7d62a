"""The whole config: sections composed into `Config`, built from YAML and `--set` overrides with
errors that name the key, and the checks that span sections."""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .base import ConfigError, require
from .data import DataConfig
from .evaluation import EvalConfig
from .mitigation import MitigationConfig
from .model import ModelConfig
from .resources import ResourcesConfig, TrackingConfig
from .sample import SampleConfig
from .study import GridConfig, SearchConfig, StudyConfig
from .theory import TheoryConfig
from .train import TrainConfig

FINE_TUNE_LR_MAX = 5e-4  # above this, a base model's fine-tuning lr is a from-scratch one (warned)


@dataclass
class Config:
    study: StudyConfig = field(default_factory=StudyConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not meant: one line each, naming the key and why."""
        out = []
        fine_tunes = self.model.init == "base" or "base" in self.grid.extra.get("model.init", [])
        if fine_tunes and self.train.lr > FINE_TUNE_LR_MAX:
            out.append(
                f"train.lr {self.train.lr:g} is a from-scratch learning rate; fine-tuning a pretrained base "
                f"(model.init: base) usually wants 1e-5..1e-4 (SmolLM2-135M: 5e-5), or it forgets what it knew"
            )
        if self.sample.backend == "vllm" and self.sample.precision == "bf16":
            out.append(
                "sample.backend vllm with sample.precision bf16 is not batch-invariant: a row's tokens depend on the "
                "batch it is drawn in, so another sample.batch_size or corpus size draws other rows (fp32, the "
                "default, does not)"
            )
        return out

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A copy with dotted-key overrides applied and validated (schema only: no file system)."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return from_dict(data)


# ----------------------------------------------------------------------------------------------
# Building from plain data, with errors that name the key


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, _migrate(data, source), prefix="", source=source)
    validate(cfg)
    return cfg


def _migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Earlier releases wrote the contamination search inside the grid: `grid.contamination:
    {search: threshold, ...}` (configs) or `grid.contamination_search` (run dirs' study.yaml).
    Both become the `search` section; the lineages at c = lo and hi start it."""
    grid = data.get("grid")
    if not isinstance(grid, dict):
        return data
    old = grid.get("contamination_search")
    if isinstance(grid.get("contamination"), dict):
        old = grid["contamination"]
    if old is None and "contamination_search" not in grid:
        return data
    grid = {k: v for k, v in grid.items() if k != "contamination_search"}
    data = {**data, "grid": grid}
    if old is None:
        return data
    raw = {("method" if k == "search" else k): v for k, v in old.items()}
    search = _build(SearchConfig, raw, prefix="grid.contamination.", source=source)
    search.validate(prefix="grid.contamination")
    grid["contamination"] = [search.lo, search.hi]
    return {**data, "search": dataclasses.asdict(search)}


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: `{prefix.rstrip('.')}` must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean `{prefix}{near[0]}`?" if near else f"; valid keys: {sorted(names)}"
            raise ConfigError(f"{source}: unknown key `{prefix}{key}`{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}", source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: `{key}` must be one of {list(args)} (got {value!r})")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # a scalar is a one-element list: `--set grid.seed=3`
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: `{key}` must be a mapping, got {value!r}")
        return dict(value)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, source)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    raise ConfigError(f"{source}: `{key}` must be {getattr(hint, '__name__', hint)}, got {value!r}")


def validate(cfg: Config) -> None:
    """Every section's own checks, then the checks that span sections. Pure: reads nothing but
    `cfg` and changes nothing (what is installed or on disk: `engines.environment`)."""
    for section in dataclasses.fields(cfg):
        getattr(cfg, section.name).validate()
    s, g, m, t, sm, d = cfg.study, cfg.grid, cfg.model, cfg.train, cfg.sample, cfg.data
    if cfg.search.enabled:
        at = cfg.search.at_generation
        require(
            at is None or 1 <= at <= s.generations,
            "search.at_generation",
            f"must be an integer in [1, study.generations={s.generations}]",
        )
    for key in g.extra:
        try:
            cfg.get(key)
        except AttributeError:
            raise ConfigError(f"`grid.extra.{key}` is not a config key; use a dotted path like `model.init`") from None
    th = cfg.theory
    if m.family == "linear_regression":
        require(
            th.features >= 1 and th.samples > th.features + 1,
            "theory.samples",
            f"must exceed theory.features + 1 = {th.features + 1} (OLS)",
        )
        require(th.noise > 0, "theory.noise", "must be > 0")
    if m.family == "gmm":
        require(
            len(th.gmm_weights) == len(th.gmm_means) == len(th.gmm_stds) >= 2,
            "theory.gmm_weights",
            "theory.gmm_means and theory.gmm_stds must have the same length >= 2",
        )
        require(
            all(w > 0 for w in th.gmm_weights) and all(x > 0 for x in th.gmm_stds),
            "theory.gmm_weights",
            "and theory.gmm_stds must be positive",
        )
    require(
        cfg.resources.gpu in (0, 1) or t.workers == 1,
        "resources.gpu",
        f"{cfg.resources.gpu:g} is a fraction of a GPU, but DeepSpeed over train.workers={t.workers} runs one nccl "
        "rank per GPU; use resources.gpu: 1, or train.workers: 1",
    )
    if m.adapter == "lora":
        require(t.engine == "torch", "model.adapter", "`lora` runs with train.engine: torch")
    if m.init == "base" or "base" in g.extra.get("model.init", []):
        require(bool(m.base_path), "model.base_path", "is required when model.init is `base`: a local HF model dir")
    if sm.backend == "vllm":
        require(
            cfg.mitigation.filter != "watermark",
            "sample.backend",
            "`vllm` cannot watermark; use `fast` or `hf` with mitigation.filter: watermark",
        )
    require(
        0 < sm.prompt_tokens < d.seq_len or (not sm.keep_prompt and sm.prompt_tokens == d.seq_len),
        "sample.prompt_tokens",
        f"must be in (0, data.seq_len={d.seq_len}) (or equal to it with sample.keep_prompt: false)",
    )
    require(
        cfg.mitigation.filter == "none" or m.family == "lm",
        "mitigation.filter",
        "applies to language models only (model.family: lm)",
    )


# ----------------------------------------------------------------------------------------------
# Files and overrides


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (`grid.contamination=[0.0,1.0]`)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set study.generations=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})") from None
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] == "grid" and len(parts) > 2 and parts[1] == "extra":
        data["grid"]["extra"][".".join(parts[2:])] = value  # extra keys are themselves dotted
        return
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"--set {key}: unknown section `{'.'.join(parts[: i + 1])}`")
        node = node[part]
    if not isinstance(node, dict) or parts[-1] not in node:
        section = node if isinstance(node, dict) else {}
        near = difflib.get_close_matches(parts[-1], list(section), n=1)
        hint = f"; did you mean `{'.'.join(parts[:-1] + [near[0]])}`?" if near else ""
        raise ConfigError(f"--set {key}: unknown key{hint}")
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        # The C build of the same safe loader when libyaml is there (10x faster: the driver reads
        # study.yaml often); never a loader that builds arbitrary objects.
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    data = json.loads(json.dumps(data))  # deep copy, plain types only
    base = Config().to_dict()
    for section, values in data.items():
        if section not in base:
            near = difflib.get_close_matches(str(section), list(base), n=1)
            hint = f"; did you mean `{near[0]}`?" if near else f"; sections: {list(base)}"
            raise ConfigError(f"{path}: unknown section `{section}`{hint}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section `{section}` must be a mapping")
        for key, value in values.items():
            if key not in base[section]:
                # let _build produce the "did you mean" message with the full key
                base[section][key] = value
            elif key == "extra" and section == "grid":
                base[section][key] = dict(value or {})
            else:
                base[section][key] = value
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(base, key, value)
    return from_dict(base, source=str(path))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
