"""`check_rules`: every rule between params keys that a schema cannot state, for a whole run, applied by the tools
before any work (quickstart, compare for every planned run, doctor): a rule found later costs a whole run.
Each rule stays with the code that reads its settings: the trainer's (`hrm.training.setup.train_rules`, which the
trainer also applies itself), the generator's and validator's (`ValidateSettings.from_params`), convert's
augmentation and the model's (`ModelConfig`). Kept out of `hrm.config` so that every stage's import closure, and
so its DVC deps, stays its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hrm.config import DEFAULT_PARAMS, section


def check_rules(params: dict[str, Any], source: str | Path = DEFAULT_PARAMS, world_size: int = 1) -> None:
    """A full schema-checked params set against every rule between keys; ConfigError/UserError naming `source`
    and the keys."""
    from hrm.data import spec
    from hrm.data.conversion.augment import transforms_for
    from hrm.data.validation.validate import ValidateSettings
    from hrm.models.config import ModelConfig
    from hrm.training.setup import train_rules

    train_rules(params, source, world_size)
    # generate (city pairs and thresholds, difficulty), validate (weights sum to 1), convert.augment's name
    settings = ValidateSettings.from_params(params, source)
    rows, cols = settings.generate.rows, settings.generate.cols
    transforms_for(settings.augment, rows, cols)  # dihedral needs square maps
    ModelConfig.from_arch(  # heads divide hidden_size into even head dims, the puzzle-embedding prefix fits
        section(params, "arch", source),
        seq_len=rows * cols,
        vocab_size=spec.VOCAB_SIZE,
        num_puzzle_identifiers=1 + len(settings.generate.cost_model.vehicles),
        batch_size=1,
    )
