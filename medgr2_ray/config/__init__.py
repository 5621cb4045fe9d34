"""Typed configuration for the whole system: pydantic models with bounds and a docstring per field.

Defaults live in the sections (`sections.py`) and only there; YAML files under configs/ override what
differs. `load_config` reads a YAML file, applies dotted overrides (`learner.lr=1e-5`), and turns every
validation failure into a `ConfigError` that names the file, the key and, for unknown keys, the closest
valid one. No heavy imports: this package is imported by the CLI before anything else.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medgr2_ray.config.sections import (
    AugmentConfig,
    CycleConfig,
    DataConfig,
    EngineConfig,
    EvalConfig,
    GradedDataConfig,
    GRPOConfig,
    LearnerConfig,
    LoopConfig,
    LoraConfig,
    ModelConfig,
    PoolConfig,
    RayConfig,
    RewardConfig,
    RunConfig,
    SelectionConfig,
    SolverConfig,
    TinyModelConfig,
    _Section,
)

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "CycleConfig",
    "DataConfig",
    "EngineConfig",
    "EvalConfig",
    "GRPOConfig",
    "GradedDataConfig",
    "LearnerConfig",
    "LoopConfig",
    "LoraConfig",
    "ModelConfig",
    "PoolConfig",
    "RayConfig",
    "RewardConfig",
    "RunConfig",
    "SelectionConfig",
    "SolverConfig",
    "TinyModelConfig",
    "dump_config",
    "load_config",
    "parse_override",
]


class Config(_Section):
    """The whole system's configuration."""

    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    policy: ModelConfig = ModelConfig()
    """The solver policy P."""
    generator: ModelConfig = ModelConfig()
    """The data generator G."""
    reward_model: ModelConfig = ModelConfig()
    """The reward model R backbone (a scalar head is added)."""
    engine: EngineConfig = EngineConfig()
    rollout_pool: PoolConfig = PoolConfig()
    """Policy rollout actors."""
    generator_pool: PoolConfig = PoolConfig()
    """Generator rollout actors."""
    scorer_pool: PoolConfig = PoolConfig()
    """Reward-model scorer actors."""
    learner: LearnerConfig = LearnerConfig()
    grpo: GRPOConfig = GRPOConfig()
    reward: RewardConfig = RewardConfig()
    graded: GradedDataConfig = GradedDataConfig()
    selection: SelectionConfig = SelectionConfig()
    data: DataConfig = DataConfig()
    cycle: CycleConfig = CycleConfig()
    solver: SolverConfig = SolverConfig()
    loop: LoopConfig = LoopConfig()
    """The asynchronous GRPO loop (actors/, loop/controller.py)."""
    eval: EvalConfig = EvalConfig()
    """Extra evaluation protocols (Med-R1 cross-modality / cross-task transfer)."""


class ConfigError(ValueError):
    """A configuration problem, with a message a person can act on."""


def _known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Valid field names at `loc` (the parent of a bad key) in the model tree."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(str(part)) if isinstance(current, type) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        current = field.annotation
    return list(current.model_fields)


def _describe(error: dict[str, Any], source: str) -> str:
    """One readable line for one pydantic error."""
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(Config, loc[:-1]), n=1)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{source}: unknown key '{key}'{hint}"
    return f"{source}: '{key}': {error['msg']} (got {error.get('input')!r})"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c = value` in a nested dict, creating levels as needed."""
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key.path=value`; the value is parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply dotted overrides."""
    source = str(path) if path is not None else "<defaults>"
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist; see configs/ for examples")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        tree = loaded
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    if overrides:
        source += " (with --set overrides)"
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(e, source) for e in exc.errors())) from None


def dump_config(config: Config) -> str:
    """The resolved config as YAML (what `medgr2 config show` prints and run dirs keep)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
