"""One source for every default: each setting is declared once, in a Dagster-free settings class, and each asset's
Dagster Config is that class (it adds no field of its own)."""

import importlib
import pkgutil
from collections import defaultdict
from collections.abc import Iterator

import dagster as dg
import pytest
from pydantic import BaseModel

import si_assets
from si_assets.assets.collection import ImagePoolConfig, SeedConfig
from si_assets.assets.evaluation import EvalConfig
from si_assets.assets.optimization import TrainingConfig
from si_assets.assets.organization import VerificationConfig
from si_assets.assets.sampling import SamplingConfig
from si_assets.assets.world import WorldConfig
from si_assets.collection.images import ImagePoolSettings
from si_assets.collection.sampling import SamplingSettings
from si_assets.evaluation.data import EvalSettings
from si_assets.modeling.sources import SeedSettings
from si_assets.optimization.dpo import TrainingSettings
from si_assets.organization.verification import VerificationSettings
from si_assets.rounds.gate import GatePolicy
from si_assets.world import WorldSpec

# Names that more than one class declares because each is a knob of a different thing, not one knob twice.
PER_COMPONENT = {
    "seed": "each random stream has its own: world, seed SFT, CLIP training, sampling, pairing, DPO, POPE questions",
    "batch_size": "sampling, DPO, evaluation, seed SFT and CLIP training each batch their own work",
    "chunk_size": "sampling and CLIP scoring store their own resumable chunks",
    "max_new_tokens": "sampled responses and evaluation captions",
    "lr": "seed SFT and CLIP training",
    "source": "where the round's images come from, and where the evaluation data comes from",
    "architecture": "the nested sizes of the two bootstrap models",
    "image_size": "the world's images, and each tiny model's input",
    "patch_size": "each tiny model's vision tower",
    "vision_width": "each tiny model's vision tower",
    "vision_layers": "each tiny model's vision tower",
    "text_width": "each tiny model's text tower",
    "text_layers": "each tiny model's text tower",
}
ASSET_SETTINGS = [
    (ImagePoolConfig, [ImagePoolSettings]),
    (SeedConfig, [SeedSettings]),
    (SamplingConfig, [SamplingSettings]),
    (VerificationConfig, [VerificationSettings]),
    (TrainingConfig, [TrainingSettings]),
    (EvalConfig, [EvalSettings, GatePolicy]),
    (WorldConfig, [WorldSpec]),
]


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def settings_classes() -> list[type[BaseModel]]:
    """Every pydantic model the product defines (its modules imported first)."""
    for module in pkgutil.walk_packages(si_assets.__path__, "si_assets."):
        importlib.import_module(module.name)
    found = {c for c in _subclasses(BaseModel) if c.__module__.startswith("si_assets.")}
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def declared(cls: type[BaseModel]) -> set[str]:
    """The fields `cls` itself declares (not those it inherits)."""
    return {name for name in cls.__dict__.get("__annotations__", {}) if name in cls.model_fields}


def test_no_setting_is_declared_twice() -> None:
    classes = settings_classes()
    assert len(classes) > 20
    owners: dict[str, list[str]] = defaultdict(list)
    for cls in classes:
        for name in declared(cls):
            inherited = [base.__qualname__ for base in cls.__mro__[1:] if name in getattr(base, "model_fields", {})]
            # a subclass that re-declares a field would hold a second default for the same knob
            assert not inherited or name == "architecture", f"{cls.__qualname__}.{name} re-declares {inherited}"
            owners[name].append(cls.__qualname__)
    twice = {name: sorted(owner) for name, owner in owners.items() if len(owner) > 1}
    unexplained = {name: owner for name, owner in twice.items() if name not in PER_COMPONENT}
    assert not unexplained, f"declared in more than one class: {unexplained}"


@pytest.mark.parametrize(("config", "settings"), ASSET_SETTINGS, ids=lambda c: getattr(c, "__name__", ""))
def test_each_asset_config_is_its_stage_settings(config: type[dg.Config], settings: list[type[BaseModel]]) -> None:
    assert all(issubclass(config, s) for s in settings)
    assert not declared(config), f"{config.__name__} declares fields of its own: {declared(config)}"
    expected = {name for s in settings for name in s.model_fields}
    assert set(config.model_fields) == expected
    # the same defaults, through Dagster's config schema too
    defaults = config().model_dump()
    for s in settings:
        assert {k: defaults[k] for k in s.model_fields} == s().model_dump()


def test_a_bad_setting_is_refused_with_its_name() -> None:
    for cls, bad, name in (
        (SamplingSettings, {"sd_neg": float("nan")}, "sd_neg"),
        (SamplingSettings, {"temperature": float("nan")}, "temperature"),
        (SamplingSettings, {"n_samples": 2, "n_negatives": 3}, "n_negatives"),
        (SamplingSettings, {"mu_pos": 0.5, "mu_neg": 0.2}, "mu_pos < mu_neg"),
        (EvalConfig, {"batch_size": 0}, "batch_size"),
        (EvalConfig, {"pope_per_image": -3}, "pope_per_image"),
        (EvalConfig, {"min_precision_gain": float("nan")}, "min_precision_gain"),
        (EvalConfig, {"recall_tolerance": -1}, "recall_tolerance"),
        (TrainingSettings, {"learning_rate": float("inf")}, "learning_rate"),
        (TrainingSettings, {"max_length": -5}, "max_length"),
        (VerificationSettings, {"verification": "none", "negatives": "own_samples"}, "needs verification='clip'"),
    ):
        with pytest.raises(ValueError, match=name):
            cls(**bad)


def _numeric_fields() -> list[tuple[type[BaseModel], str, object]]:
    """(class, field, a value outside its bounds) for every numeric field of every settings class; NaN for a float
    without bounds to break."""
    cases = []
    for cls in settings_classes():
        if issubclass(cls, dg.Config):
            continue  # the Dagster Configs are these classes
        for name in declared(cls):
            field = cls.model_fields[name]
            kind = field.annotation
            if kind not in (int, float, int | None, float | None):
                continue
            bounds = {type(m).__name__: m for m in field.metadata}
            if "Ge" in bounds:
                cases.append((cls, name, bounds["Ge"].ge - 1))
            elif "Gt" in bounds:
                cases.append((cls, name, bounds["Gt"].gt - 1))
            if "Le" in bounds:
                cases.append((cls, name, bounds["Le"].le + 1))
            elif "Lt" in bounds:
                cases.append((cls, name, bounds["Lt"].lt + 1))
            if kind in (float, float | None):
                cases += [(cls, name, float("nan")), (cls, name, float("inf"))]
            if not bounds:
                cases.append((cls, name, "unbounded"))
    return cases


def test_every_numeric_setting_is_bounded_and_refuses_nan_naming_the_field() -> None:
    cases = _numeric_fields()
    assert len(cases) > 80
    unbounded = [f"{cls.__name__}.{name}" for cls, name, value in cases if value == "unbounded"]
    assert not unbounded, f"numeric settings without bounds: {unbounded}"
    for cls, name, value in cases:
        with pytest.raises(ValueError, match=name):
            cls(**{name: value})
