"""What every command-line tool of the project shares: a quiet start, ``--verbose``, its name, progress bars.

Each CLI calls :func:`quiet_tensorflow` in its ``if __name__ == "__main__":`` block, before anything imports
TensorFlow (its start-up notices are printed while it loads):

    if __name__ == "__main__":
        quiet_tensorflow()
        sys.exit(main())
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = "show TensorFlow's start-up logs and library warnings (hidden by default)"

# Loggers of the libraries whose chatter is not the user's business unless something breaks.
_NOISY_LOGGERS = ("tensorflow", "absl", "keras", "h5py", "numba")
# Python warnings these libraries raise about their own internals (deprecations inside TF/Keras and the like).
_NOISY_MODULES = r"(tensorflow|tf_keras|keras|absl|h5py|google\.protobuf|tensorboard)(\.|$)"
# What TensorFlow's shared libraries print while they load: absl-formatted lines ("I0000 00:00:1796359590.208
# 9290 port.cc:153] oneDNN custom operations are on ..."; before absl is initialised the seconds are epoch seconds), absl's note about its own initialisation, and the
# second line of the CPU-instructions notice; and the TFLite runtime's note when an interpreter allocates
# and the converter's settings line when it calibrates int8.
_STARTUP_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |WARNING: All log messages before "
                            r"absl::InitializeLog|To enable the following instructions: .* rebuild TensorFlow|"
                            r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$|"
                            r"fully_quantize: \d+, inference_type: )")


def quiet_tensorflow(verbose: bool | None = None) -> None:
    """Hide TensorFlow / absl / oneDNN start-up logs and library warnings, unless ``verbose``.

    ``verbose=None`` reads the command line: ``--verbose`` keeps everything. Call it before TensorFlow is
    imported; afterwards only the Python-side loggers and warnings are still affected.

    ``TF_CPP_MIN_LOG_LEVEL=3`` silences TensorFlow's C++ logs once it runs, but not the notices its libraries
    print while loading (TF 2.21 writes them through absl before the level is applied). Those are filtered
    out of stderr during the one ``import tensorflow``; anything else printed then still shows.

    oneDNN stays on (``TF_ENABLE_ONEDNN_OPTS`` is left alone): switching it off makes the face models 1.5-2x
    slower on CPU and moves results in the 7th digit, and a logging flag must never change a prediction.
    """
    if verbose is None:
        verbose = VERBOSE_FLAG in sys.argv[1:]
    if verbose:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # absl is a TensorFlow dependency; absent only in a broken install
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    warnings.filterwarnings("ignore", module=_NOISY_MODULES)


@contextlib.contextmanager
def without_library_notices() -> Iterator[None]:
    """Capture file descriptor 2 (C++ libraries write there directly), then pass on all but the notices
    (TensorFlow's start-up lines, the TFLite runtime's delegate note); everything else still shows."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _STARTUP_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of the ``tensorflow`` package with the start-up notices filtered out."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        with without_library_notices():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_code, ...: the real loader's
        return getattr(self._loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and hands back its spec with a :class:`_QuietLoader`.

    An import hook, because TensorFlow is imported lazily deep inside the packages: wrapping each call
    site would miss some. It acts once and removes itself.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class CLIParser(argparse.ArgumentParser):
    """Every tool's parser: a bad value is one line naming the option and pointing to ``--help``, not the usage
    of every option first (argparse's default)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: the switch :func:`quiet_tensorflow` looks for (added here so ``--help`` lists it)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)


def path_arg(text: str) -> str:
    """argparse ``type`` for a file or folder argument: refuses an empty one.

    ``Path("")`` is the current folder, so ``predict "$UNSET"`` would otherwise walk everything below it.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?)")
    return text


def refuse_file_output(parser: argparse.ArgumentParser, output: str | None, flag: str = "--output") -> None:
    """``parser.error`` (one line, exit 2) when an output folder names an existing file or cannot be made or
    written (``output_folder_problem``); call it before any model or data loads."""
    if output and os.path.exists(output) and not os.path.isdir(output):
        parser.error(f"{flag} {output} is an existing file; give a folder")
    problem = output_folder_problem(output) if output else None
    if problem:
        parser.error(f"{flag} {output}: {problem}")


def resumable_main(main) -> int:
    """Run a training tool's ``main``; Ctrl-C ends it with one line saying how to resume (exit status 130, the
    shell's for SIGINT) instead of a 50-line traceback from inside Keras."""
    try:
        return main()
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command to resume from the last finished epoch", file=sys.stderr)
        return 130


def output_folder_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be made or written (a file on its path, a read-only or virtual file system), or None.
    Nothing is left behind: a folder is made and removed in its nearest existing ancestor, since permission bits
    alone do not say (root passes ``os.access`` in /proc and on read-only mounts)."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc})"
    return None


def training_run_problem(output: str | None, flag: str = "--output") -> str | None:
    """Why an output folder is refused when it holds a training run (its history.csv): an ensemble or evaluation
    written there would replace its model and reports and leave its curves and checkpoints beside them."""
    if output and os.path.isfile(os.path.join(output, "history.csv")):
        return f"{flag} {output} holds a training run; give another folder"
    return None


def refuse_training_run(parser: argparse.ArgumentParser, output: str | None, flag: str = "--output") -> None:
    """``parser.error`` (one line, exit 2) for ``training_run_problem``."""
    problem = training_run_problem(output, flag)
    if problem:
        parser.error(problem)


def refuse_missing_dir(parser: argparse.ArgumentParser, path: str | None, flag: str = "--data-dir") -> None:
    """``parser.error`` (one line, exit 2) when a path option was given but names nothing; leaving it out is fine."""
    if path is not None and not os.path.exists(path):
        parser.error(f"{flag} {path} does not exist")


def module_prog(module: str) -> str:
    """``python -m ser.train`` for a module name, also when the module runs as ``__main__``.

    argparse's default would be the file name (``usage: train.py``), which is not how the tools are run.
    """
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None:  # started as a script: python path/to/file.py
            return f"python {sys.argv[0]}"
        module = spec.name.removesuffix(".__main__")
    return f"python -m {module}"


def progress(items: Iterable[T], total: int | None = None, desc: str | None = None,
             unit: str = "it", log_every: float | None = None) -> Iterable[T]:
    """A tqdm progress bar on stderr that only shows on a terminal (``disable=None``): logs and CI stay clean.
    Off a terminal, ``log_every`` (seconds) gives a log line now and then instead, for long steps whose output goes
    to a file (a ``nohup`` training log stayed silent through minutes of feature extraction)."""
    from tqdm.auto import tqdm

    bar = tqdm(items, total=total, desc=desc, unit=unit, leave=False, disable=None, dynamic_ncols=True)
    if log_every is None or not bar.disable:
        return bar
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return _logged_progress(items, total, desc or "progress", unit, log_every)


def _logged_progress(items: Iterable[T], total: int | None, desc: str, unit: str, every: float) -> Iterator[T]:
    import time

    start = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every:
            last = now
            logging.getLogger("progress").info("%s: %d%s %s(s), %.0f s", desc, done, f" of {total}" if total else "",
                                               unit, now - start)


def none_exist(paths: Iterable[str | os.PathLike]) -> bool:
    """True when none of ``paths`` exists, each then said on stderr (``PATH: no such file``): a predict tool has
    nothing to read and says so before its model loads."""
    paths = list(paths)
    if any(os.path.exists(p) for p in paths):
        return False
    for path in paths:
        echo(f"error: {path}: no such file", err=True)
    return True


def echo(text: str, err: bool = False) -> None:
    """Print a line (stdout, or stderr with ``err``) without tearing an active :func:`progress` bar."""
    from tqdm.auto import tqdm

    stream = sys.stderr if err else sys.stdout
    tqdm.write(text, file=stream)
    stream.flush()  # results stream line by line into pipes (e.g. `... --json | jq`)


_DEFAULT_NOTE = re.compile(r"\s*\(default: .*\)\s*$", re.DOTALL)


def flags_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """Option strings of every optional argument whose help says nothing (a bare "(default: X)" counts)."""
    missing = []
    for action in _all_actions(parser):
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        text = _DEFAULT_NOTE.sub("", action.help or "").replace("%(default)s", "").strip()
        if not text:
            missing.append(max(action.option_strings, key=len))
    return missing


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string (``--model-dir``, ``-h``, ...) the parser and its subcommands accept."""
    return {flag for action in _all_actions(parser) for flag in action.option_strings}


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions and those of its subcommands (argparse keeps no public list of either)."""
    actions = []
    for action in parser._actions:
        actions.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                actions.extend(_all_actions(sub))
    return actions
