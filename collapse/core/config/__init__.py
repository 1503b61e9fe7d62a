"""Typed study configuration: dataclass defaults <- YAML file <- `--set key=value` overrides.

One module per section (`study`, `data`, `model`, `train`, `sample`, `evaluation`, `theory`,
`mitigation`, `resources`), each a dataclass whose fields carry a one-line doc and whose
`validate()` checks itself; `loading` composes them into `Config` and reads YAML and overrides;
`schema` turns the dataclasses into the JSON Schema and the configuration reference. Any problem
raises `ConfigError` naming the dotted key and what would fix it; the CLI turns that into exit
code 2 and one line on stderr.
"""

from .base import (
    ARCHS,
    DECODINGS,
    ENGINES,
    FAMILIES,
    FILTERS,
    INITS,
    PRECISION_DOC,
    PRECISIONS,
    REGIMES,
    SAMPLE_MODES,
    SAMPLERS,
    STUDY_WIDE,
    WANDB_MODES,
    ConfigError,
    doc,
    require,
)
from .data import DataConfig
from .evaluation import EvalConfig
from .loading import FINE_TUNE_LR_MAX, Config, dump_config, from_dict, load_config, parse_override, validate
from .mitigation import MitigationConfig
from .model import ModelConfig
from .resources import ResourcesConfig, TrackingConfig
from .sample import SampleConfig
from .schema import json_schema, reference_markdown
from .study import GridConfig, SearchConfig, StudyConfig
from .theory import TheoryConfig
from .train import TrainConfig

__all__ = [
    "ARCHS",
    "DECODINGS",
    "ENGINES",
    "FAMILIES",
    "FILTERS",
    "FINE_TUNE_LR_MAX",
    "INITS",
    "PRECISIONS",
    "PRECISION_DOC",
    "REGIMES",
    "SAMPLERS",
    "SAMPLE_MODES",
    "STUDY_WIDE",
    "WANDB_MODES",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GridConfig",
    "MitigationConfig",
    "ModelConfig",
    "ResourcesConfig",
    "SampleConfig",
    "SearchConfig",
    "StudyConfig",
    "TheoryConfig",
    "TrackingConfig",
    "TrainConfig",
    "doc",
    "dump_config",
    "from_dict",
    "json_schema",
    "load_config",
    "parse_override",
    "reference_markdown",
    "require",
    "validate",
]
