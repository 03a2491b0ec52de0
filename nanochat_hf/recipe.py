"""A training stage's arguments: `--config recipe.yaml` plus flags, through TRL's `TrlParser`.

    (cfg,) = parse_stage_args((PretrainConfig,), ["--config", "recipes/tiny/pretrain.yaml", "--depth", "2"])

Every YAML key is a flag and flags win over the YAML (TRL's convention). The recipe is read once more
here, first, so a typo'd key is refused naming the file, the line, the key and the closest valid key,
instead of TRL's list of unknown arguments.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nanochat_hf.errors import UserError, did_you_mean

EXTRA_KEYS = {"env"}  # TrlParser sets these environment variables before parsing


def arg(default, help: str):
    """A dataclass field that is also a flag with `--help` text."""
    return dataclasses.field(default=default, metadata={"help": help})


def check_recipe(path: str, types: tuple[type, ...]) -> None:
    """Refuse a recipe that is not a YAML mapping of known keys, in one line naming the file and line."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"recipe {path} not found; pass --config with a YAML file such as "
                                "recipes/tiny/pretrain.yaml")
    try:
        root = yaml.compose(file.read_text(encoding="utf-8"))  # nodes keep their line numbers
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise UserError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err}); fix that line") from None
    if root is None:
        return  # an empty recipe: the defaults
    if not isinstance(root, yaml.MappingNode):
        raise UserError(f"{path}: a recipe is a YAML mapping of `key: value` lines")
    valid = {f.name for t in types for f in dataclasses.fields(t)} | EXTRA_KEYS
    for key_node, _ in root.value:
        key = key_node.value
        if key not in valid:
            raise UserError(f"{path}:{key_node.start_mark.line + 1}: unknown key {key!r}{did_you_mean(key, valid)}; "
                            "every valid key is a flag that --help lists")


def parse_stage_args(types: tuple[type, ...], argv: list[str]) -> tuple:
    """The dataclasses of `types`, filled from `--config` (checked first) and the flags."""
    from trl import TrlParser

    argv = list(argv)
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        check_recipe(argv[argv.index("--config") + 1], types)
    return TrlParser(types).parse_args_and_config(argv)
