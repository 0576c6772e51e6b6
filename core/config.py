"""Hyperparameters live in one dataclass per recipe; this turns it into a CLI with overrides.

    parser = config_parser(TrainConfig, "Train ...", HELP, advanced={"mixup"})   # usage: python -m ser.train
    cfg = parse_config(TrainConfig, argv, "Train ...", HELP, advanced={"mixup"})

Every field becomes ``--field-name``; its help comes from the recipe's HELP dict, else from
:data:`COMMON_HELP` (fields most recipes share). Fields named in ``advanced`` are listed in a separate
"advanced options" group after the main ones: settings that exist for experiments and measured no gain
(docs/results.md), so a new user can skip them.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, Collection, Sequence, TypeVar

from core.cli import CLIParser, add_verbose_flag, module_prog, output_folder_problem, quiet_tensorflow

T = TypeVar("T")

ADVANCED_TITLE = "advanced options"
ADVANCED_DESCRIPTION = "kept for experiments; they measured no gain here (docs/results.md)"

# Help for fields that mean the same in every recipe; a recipe's own HELP entry wins.
COMMON_HELP: dict[str, str] = {
    "data_dir": "folder holding the corpus (or a root with one folder per corpus); default $EMOTION_DATA_DIR, "
                "else a kagglehub download",
    "output": "run folder; re-running with the same folder resumes",
    "epochs": "training epochs (early stopping may end sooner)",
    "batch_size": "examples per training step",
    "learning_rate": "initial learning rate (Adam)",
    "label_smoothing": "label smoothing of the cross-entropy (0 = off)",
    "schedule": "learning rate: plateau (halve when validation loss stalls) or cosine (decay to 0 over --epochs)",
    "patience": "epochs without validation improvement before early stopping",
    "lr_patience": "epochs without validation improvement before the learning rate is halved (plateau)",
    "seed": "random seed (splits, initial weights, augmentation)",
    "val_fraction": "fraction held out for validation (by speaker / subject where the corpus has them)",
    "test_fraction": "fraction held out for testing (by speaker / subject where the corpus has them)",
    "dropout": "dropout rate before the classifier",
    "slug": "Kaggle dataset slug overriding the default download",
    "slugs": "kagglehub overrides per corpus, e.g. ravdess=me/my-ravdess,tess=me/tess",
    "cache_dir": "feature / preprocessing cache folder ('' disables it)",
    "n_jobs": "worker processes for feature extraction (-1 = all cores)",
    "threads": "TensorFlow intra-op threads; 0 = all cores",
    "model_dir": "trained run folder (model.keras + config.json)",
    "detector": "face detector: blazeface, blazeface-full, haar, mtcnn (or none where faces are already cropped)",
    "refit": "final fit once the recipe is chosen: validation data joins training, all --epochs run, the last "
             "weights are kept (needs --schedule cosine); only the test split is scored",
    "max_seconds": "seconds of each clip the model sees",
    "n_mels": "log-mel bands",
    "fps": "video frames sampled per second",
}


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def field_help(name: str, help_texts: dict[str, str] | None = None) -> str:
    """The help line of one field: the recipe's own text, else the shared one, else ''."""
    return (help_texts or {}).get(name) or COMMON_HELP.get(name, "")


def missing_help(cls: type, help_texts: dict[str, str] | None = None) -> list[str]:
    """Fields of ``cls`` that would get no help line (tests fail on these)."""
    return [f.name for f in dataclasses.fields(cls) if not field_help(f.name, help_texts)]


def recipe_default_text(name: str, default: Any, recipes: dict[str, dict[str, Any]] | None) -> str:
    """``--help``'s default of one option: the field's, or per model where a recipe (``apply_recipe``) sets it."""
    by_value: dict[str, list[str]] = {}
    for model, recipe in (recipes or {}).items():
        if name in recipe and recipe[name] != default:
            by_value.setdefault(str(recipe[name]), []).append(model)
    if not by_value:
        return f"(default: {default})"
    per_model = "; ".join(f"{', '.join(models)}: {value}" for value, models in by_value.items())
    return f"(default by --model: {per_model}; otherwise {default})"


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, help_texts: dict[str, str] | None = None,
                       advanced: Collection[str] = (), recipes: dict[str, dict[str, Any]] | None = None) -> None:
    """One ``--field-name`` option per dataclass field, defaulting to the field's default.

    Fields in ``advanced`` go to a separate group, printed after the main options by ``--help``. ``recipes``
    (model name -> option values, as ``apply_recipe`` applies them) are named in the help of the options they set,
    so ``--help`` shows the values a run really uses.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(advanced) - names
    if unknown:  # a renamed field would otherwise silently move back into the main group
        raise ValueError(f"advanced options {sorted(unknown)} are not fields of {cls.__name__}")
    group = parser.add_argument_group(ADVANCED_TITLE, ADVANCED_DESCRIPTION) if advanced else None
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        kind = type(default)
        flag = "--" + field.name.replace("_", "-")
        own = field_help(field.name, help_texts)
        # An option that is unset by default and whose help says what happens then needs no "(default: None)".
        shown = "" if default is None and "default" in own else recipe_default_text(field.name, default, recipes)
        text = (own + " " + shown).strip()
        target = group if field.name in advanced else parser
        if kind is bool:
            target.add_argument(flag, type=parse_bool, default=default, metavar="BOOL", help=text)
        elif default is None:
            target.add_argument(flag, default=None, help=text)
        else:
            target.add_argument(flag, type=kind, default=default, help=text)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**values)


def config_parser(cls: type, description: str, help_texts: dict[str, str] | None = None, *,
                  prog: str | None = None, advanced: Collection[str] = (),
                  recipes: dict[str, dict[str, Any]] | None = None) -> argparse.ArgumentParser:
    """The parser of a dataclass recipe, named after the recipe's module (``usage: python -m ser.train``)."""
    parser = CLIParser(prog=prog or module_prog(cls.__module__), description=description)
    add_dataclass_args(parser, cls, help_texts, advanced, recipes)
    add_verbose_flag(parser)
    return parser


def parse_config(cls: type[T], argv: Sequence[str] | None, description: str,
                 help_texts: dict[str, str] | None = None, *, prog: str | None = None,
                 advanced: Collection[str] = (), recipes: dict[str, dict[str, Any]] | None = None) -> T:
    parser = config_parser(cls, description, help_texts, prog=prog, advanced=advanced, recipes=recipes)
    args = parser.parse_args(argv)
    config = from_args(cls, args)
    try:  # before any data is loaded or any output written: one clear line, exit status 2
        validate_config(config)
    except ValueError as exc:
        parser.error(str(exc))
    if argv is None:
        # The real command line: quiet TensorFlow here too, for CLIs whose __main__ block does not (yet) call
        # core.cli.quiet_tensorflow. Recipes import TensorFlow lazily, after parsing, so this is in time.
        # Tests pass argv and keep their own logging.
        quiet_tensorflow(args.verbose)
    return config


# Range checks by field name, shared by every recipe (a field a recipe lacks is simply not checked).
POSITIVE_INTS = frozenset({"epochs", "batch_size", "image_size", "n_mfcc", "n_mels", "pool", "dense_units",
                           "resnet_size", "face_size", "sample_rate", "lstm_units", "audio_filters",
                           "audio_lstm_units", "detect_every", "folds", "video_frames", "max_connections",
                           "upload_workers"})
NON_NEGATIVE = frozenset({"patience", "lr_patience", "augment", "fine_tune_epochs", "fine_tune_layers",
                          "max_per_class", "max_train_per_class", "limit", "threads", "frozen_epochs", "workers",
                          "mixup", "trim_db", "aux_weight", "shift", "erasing", "base_size", "teacher_views"})
POSITIVE_FLOATS = frozenset({"learning_rate", "fine_tune_lr", "fine_tune_learning_rate", "max_seconds", "fps", "head_c",
                             "cache_seconds", "alpha", "clipnorm"})
FRACTIONS = frozenset({"val_fraction", "test_fraction", "dropout", "label_smoothing"})  # 0 <= x < 1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate_config(config: Any) -> None:
    """ValueError (one line naming the option) for settings no run can use; then the recipe's own ``validate()``.

    Every float must be finite; counts such as ``epochs`` and ``batch_size`` positive; fractions in [0, 1);
    ``n_jobs`` not 0; an ``output`` run folder must not be an existing file.
    """
    for field in dataclasses.fields(config):
        name, value = field.name, getattr(config, field.name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{_flag(name)} must be a finite number, got {value}")
        if not isinstance(value, (int, float)):
            continue
        if name in POSITIVE_INTS | POSITIVE_FLOATS and value <= 0:
            raise ValueError(f"{_flag(name)} must be > 0, got {value}")
        if name in NON_NEGATIVE and value < 0:
            raise ValueError(f"{_flag(name)} must be >= 0, got {value}")
        if name in FRACTIONS and not 0 <= value < 1:
            raise ValueError(f"{_flag(name)} must be from 0 to below 1, got {value}")
        if name == "n_jobs" and value == 0:
            raise ValueError("--n-jobs must be -1 (all cores) or a positive number of processes, got 0")
    fractions = [getattr(config, n, 0.0) for n in ("val_fraction", "test_fraction")]
    if sum(fractions) >= 1:
        raise ValueError(f"--val-fraction + --test-fraction must be below 1, got {sum(fractions):g}")
    output = getattr(config, "output", None)
    if isinstance(output, str) and output and Path(output).exists() and not Path(output).is_dir():
        raise ValueError(f"--output {output} is an existing file; the run folder must be a folder (give a new "
                         "or existing folder name)")
    problem = output_folder_problem(output) if isinstance(output, str) and output else None
    if problem:  # found now, not after minutes of feature extraction
        raise ValueError(f"--output {output}: {problem}")
    own = getattr(config, "validate", None)
    if callable(own):
        own()


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def given_options(argv: Sequence[str] | None) -> set[str]:
    """Field names of the options written on the command line (``--epochs 5`` and ``--epochs=5`` -> epochs)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    return {a.split("=", 1)[0][2:].replace("-", "_") for a in args if a.startswith("--")}


def apply_recipe(config: T, recipes: dict[str, dict[str, Any]], argv: Sequence[str] | None) -> T:
    """``config`` with its model's best measured recipe for every option the command line left out."""
    given = given_options(argv)
    recipe = recipes.get(getattr(config, "model", ""), {})
    return dataclasses.replace(config, **{k: v for k, v in recipe.items() if k not in given})  # type: ignore[type-var]
