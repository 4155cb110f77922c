"""Command-line options -> config settings.

Options that set a config field default to None, meaning "not given": the
settings are the config class's defaults, then a --config file, then the flags
given (`slc.config.resolve`). Help texts read the defaults from the config
classes, the one home of defaults.
"""

from __future__ import annotations

from typing import Any

from slc import config_io
from slc import config as cfg

CONFIG_HELP = "{} as YAML or JSON; flags given override it, settings it leaves out keep their defaults."

PRESET_HELP = (
    "Encoder: Speech2Text tiny (1.3 M parameters, for CPUs and tests), small (17.5 M, the s2t-small encoder), "
    "base (44.0 M, the size of the 188 MB reference model); or tdnn (0.8 M, an x-vector TDNN: learns faster "
    "on CPUs, no pretrained weights). (default: the TrainConfig's encoder shape, tiny)"
)

TRAINING_EXTRA = "pip install 'slc[train]'"


def with_default(text: str, cls: type, name: str) -> str:
    """`text` followed by the default of `cls`'s setting `name` (dotted for nested configs)."""
    value = config_io.default(cls, name)
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
    return f"{text} (default: {shown})"


OPEN_SET_HELP = "on: calibrated confidences and 'unknown' for other languages, as the bundle was fitted; off: always one of the model's languages."


def on_off(text: str | None, flag: str) -> bool | None:
    """`on`/`off` -> True/False; None when the flag was not given."""
    if text is None:
        return None
    if text not in ("on", "off"):
        raise ValueError(f"{flag} takes on or off, got {text!r}")
    return text == "on"


def codes(text: str | None) -> tuple[str, ...] | None:
    """`de, fr` -> ("de", "fr"); None when the flag was not given."""
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else None


def split_fractions(text: str | None) -> dict[str, float]:
    """`0.8,0.1,0.1` -> the IngestConfig split settings it sets; none when the flag was not given."""
    if text is None:
        return {}
    try:
        train, val, test = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--split takes three fractions train,val,test such as 0.8,0.1,0.1, got {text!r}") from None
    return {"split.train": train, "split.val": val, "split.test": test}


def preset_shape(name: str | None) -> dict[str, Any]:
    """The TrainConfig encoder shape settings of preset `name`; none when the
    flag was not given. The model's other settings (dropout, init_from) stay."""
    if name is None:
        return {}
    shape = cfg.ModelConfig.preset(name)
    return {f"model.{key}": getattr(shape, key) for key in cfg.MODEL_PRESETS[name]}


def missing_extra(command: str, error: ModuleNotFoundError) -> str | None:
    """What to tell a user whose `slc COMMAND` failed to import: the extra to
    install and the missing module; None when the missing module is slc's own
    (a bug, not an install)."""
    missing = _missing_module(error)
    if missing is None or missing.partition(".")[0] == "slc":
        return None
    return f"slc {command} needs the training extra: {TRAINING_EXTRA} (missing module: {missing})"


def _missing_module(error: BaseException | None) -> str | None:
    # ray.train.torch re-raises torch's ModuleNotFoundError without a module name.
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name:
            return error.name
        error = error.__cause__ or error.__context__
    return None
