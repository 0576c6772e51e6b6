"""What every command-line tool shares (core.cli, core.config): a quiet start, --verbose, its own name in
``usage:``, a help line per option, advanced options last, progress bars that stay off logs."""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from core import cli
from conftest import load_bench_script
from core.config import COMMON_HELP, config_parser, missing_help, parse_config

REPO = Path(__file__).resolve().parents[1]
# What TensorFlow, absl and oneDNN print while loading when nobody asks them not to.
NOISE = ("oneDNN", "cuda", "absl", "WARNING: All log messages", "cpu_feature_guard", "I0000", "W0000", "E0000")


@dataclass
class Recipe:
    model: str = "cnn"
    epochs: int = 3
    mixup: float = 0.0
    pitch: bool = False


HELP = {"model": "which network", "mixup": "mixup alpha", "pitch": "add F0"}


def clean_env() -> dict[str, str]:
    """The environment a user's shell would give: no log level preset by the test suite."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_config_parser_names_the_module_and_groups_advanced_options():
    parser = config_parser(Recipe, "Train it.", HELP, advanced={"mixup", "pitch"})
    assert parser.prog == f"python -m {__name__}"
    text = parser.format_help()
    main, advanced = text.split("advanced options:")
    assert "--model" in main and "--epochs" in main and "--verbose" in main
    assert "--mixup" in advanced and "--pitch" in advanced and "--model" not in advanced
    assert "training epochs" in main  # from COMMON_HELP: a recipe's HELP need not repeat shared fields


def test_help_shows_the_defaults_a_model_recipe_sets():
    """--help must show what a run really uses: a model's recipe overrides the field default."""
    recipes = {"cnn": {"epochs": 30, "mixup": 0.0}, "lstm": {"epochs": 30}, "whisper": {"epochs": 1}}
    text = " ".join(config_parser(Recipe, "", HELP, recipes=recipes).format_help().split())
    assert "(default by --model: cnn, lstm: 30; whisper: 1; otherwise 3)" in text
    assert "mixup alpha (default: 0.0)" in text  # a recipe value equal to the default is no news
    assert "add F0 (default: False)" in text


def test_a_bad_value_is_one_line_not_the_whole_usage(capsys):
    parser = config_parser(Recipe, "", HELP)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--epochs", "three"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs" in err and "--help` lists the options" in err, err


@pytest.mark.parametrize("module", ["ser.predict", "fer.predict", "fusion.predict", "fusion.late", "ser.evaluate",
                                    "ser.ensemble", "fer.ensemble", "ser.export", "fer.export", "fer.backbones",
                                    "fer.train_gpu", "ser.finetune", "ser.whisper.silence", "webapp.__main__"])
def test_every_tool_answers_a_bad_option_in_one_line(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_info:  # before any model, corpus or file is touched
        main(["--no-such-option", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: " in err and "--help` lists the options" in err, err  # no usage first


@pytest.mark.parametrize("script", sorted(p.stem for p in (REPO / "bench").glob("*.py")))
def test_every_bench_script_answers_a_bad_option_in_one_line(script, capsys):
    module = load_bench_script(script)
    parse = module.build_parser().parse_args if hasattr(module, "build_parser") else module.parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse(["--no-such-option", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--help` lists the options" in err, err


def test_an_unset_option_whose_help_names_its_default_shows_no_default_none():
    from fer.evaluate import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "model.keras (default saved_models/fer) --dataset" in text  # was "... saved_models/fer) (default: None)"
    assert "(default: None)" not in text
    for module in ("fer.tta", "ser.train", "fer.train"):  # nor anywhere else
        parser = __import__(module, fromlist=["build_parser"]).build_parser()
        assert "(default: None)" not in " ".join(parser.format_help().split()), module


def test_advanced_names_must_be_fields():
    with pytest.raises(ValueError, match="mixupp"):
        config_parser(Recipe, "", HELP, advanced={"mixupp"})


def test_parse_config_reads_values_and_ignores_verbose():
    cfg = parse_config(Recipe, ["--epochs", "5", "--pitch", "true", "--verbose"], "", HELP, advanced={"pitch"})
    assert cfg == Recipe(epochs=5, pitch=True)


def test_missing_help_lists_fields_without_their_own_or_a_shared_text():
    assert missing_help(Recipe, HELP) == []
    assert missing_help(Recipe, {}) == ["model", "mixup", "pitch"]
    assert "epochs" in COMMON_HELP


def test_flags_without_help_sees_through_a_bare_default_note():
    parser = argparse.ArgumentParser()
    parser.add_argument("--good", default=1, help="explained (default: 1)")
    parser.add_argument("--bare", default=2, help=" (default: 2)")
    parser.add_argument("--none", default=3)
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*")
    assert cli.flags_without_help(parser) == ["--bare", "--none"]


def test_module_prog():
    assert cli.module_prog("fer.predict") == "python -m fer.predict"


def test_quiet_tensorflow_sets_the_log_level_and_verbose_changes_nothing(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli.quiet_tensorflow(verbose=True)
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    import absl.logging

    levels = {name: logging.getLogger(name).level for name in cli._NOISY_LOGGERS}
    absl_level, meta_path = absl.logging.get_verbosity(), list(sys.meta_path)
    try:
        with warnings.catch_warnings():
            cli.quiet_tensorflow(verbose=False)
            assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
            # oneDNN stays as it is: turning it off would slow the models and change results in the last digits.
            assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ or os.environ["TF_ENABLE_ONEDNN_OPTS"] != "0"
            assert logging.getLogger("tensorflow").level == logging.ERROR
    finally:  # leave the rest of the test session as it was
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        absl.logging.set_verbosity(absl_level)
        sys.meta_path[:] = meta_path


def test_startup_notices_are_filtered_from_stderr_and_the_rest_passes(capfd):
    noise = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             "I0000 00:00:1796359590.208438    9290 port.cc:153] oneDNN custom operations are on.\n"
             "E0000 00:00:1796359590.2 9290 cuda_dnn.cc:8579] Unable to register cuDNN factory\n"
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
             "appropriate compiler flags.\n"
             "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
             "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32\n")
    with cli.without_library_notices():
        os.write(2, noise.encode())
        os.write(2, b"error: a real problem\n")
        print("python-level warning", file=sys.stderr)
    # (under capfd, sys.stderr is not fd 2, so the two kept lines may come in either order)
    assert sorted(capfd.readouterr().err.splitlines()) == ["error: a real problem", "python-level warning"]


def test_path_arg_refuses_an_empty_path():
    assert cli.path_arg("clip.wav") == "clip.wav"
    for empty in ("", "  "):
        with pytest.raises(argparse.ArgumentTypeError, match="empty path"):
            cli.path_arg(empty)


@pytest.mark.parametrize("module", ["ser.predict", "fer.predict", "fusion.predict", "ser.ensemble", "fer.ensemble"])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(module, capsys):
    # Path("") is ".", which the predict tools would walk recursively (an unset "$FILE" in a script).
    main = __import__(module, fromlist=["main"]).main
    args = ["", "--output", "unused"] if module.endswith("ensemble") else [""]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "empty path" in capsys.readouterr().err


@pytest.mark.parametrize("module, words", [("ser.predict", "no audio files"),
                                           ("fusion.predict", "no video or audio files")])
def test_a_folder_without_media_is_a_usage_error_before_any_model_loads(module, words, tmp_path, capsys):
    # The model folder does not exist either: the folder's error comes first, so no model was loaded.
    (tmp_path / "notes.txt").write_text("not media")
    main = __import__(module, fromlist=["main"]).main
    assert main([str(tmp_path), "--model-dir", str(tmp_path / "no_model")]) == 2
    assert words in capsys.readouterr().err


def test_progress_is_silent_off_a_terminal(capsys):
    assert list(cli.progress(range(5), total=5, desc="x")) == [0, 1, 2, 3, 4]
    cli.echo("result line")
    out, err = capsys.readouterr()
    assert out == "result line\n" and err == ""


@pytest.mark.parametrize("module", ["ser.train", "fer.train", "fusion.predict"])
def test_help_names_the_command_and_is_quiet(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} ")
    assert proc.stderr == ""


def test_cli_modules_do_not_load_tensorflow_on_import():
    # Each CLI quiets TensorFlow in its __main__ block, which runs after the module's imports.
    modules = ["ser.train", "ser.crossval", "ser.evaluate", "ser.export", "fer.train", "fer.tta", "fer.evaluate",
               "fer.predict", "fer.ensemble", "fer.export", "fusion.train", "fusion.late", "fusion.predict",
               "webapp.__main__"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_a_prediction_prints_no_tensorflow_logs(tmp_path):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.full((48, 48), 128, np.uint8))
    proc = subprocess.run([sys.executable, "-m", "fer.predict", "--no-detect", "--json", str(face)], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert '"label"' in proc.stdout
    noisy = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, proc.stderr


@pytest.mark.parametrize("module", ["ser.predict", "fusion.predict", "fer.predict"])
def test_inputs_that_do_not_exist_are_said_before_any_model_loads(module, tmp_path, capsys):
    """A mistyped file name used to be reported after the model had loaded (~6 s). The model folder does not
    exist either: the inputs' error comes first, so no model was loaded. Exit status 1, as for an unreadable file."""
    main = __import__(module, fromlist=["main"]).main
    missing = tmp_path / "intervew.m4a"
    assert main([str(missing), "--model-dir", str(tmp_path / "no_model")]) == 1
    err = capsys.readouterr().err
    assert f"error: {missing}: no such file" in err and "no_model" not in err


@pytest.mark.parametrize("module, name", [("ser.predict", "a.wav"), ("fusion.predict", "a.mp4"),
                                          ("fer.predict", "a.jpg")])
def test_a_bulk_run_ends_with_how_many_inputs_got_nothing(module, name, tmp_path, capsys):
    """Every predict tool ends a run with failures with one count line on stderr (fer.predict alone did)."""
    main = __import__(module, fromlist=["main"]).main
    (tmp_path / name).write_bytes(b"not media at all")
    assert main([str(tmp_path / name), str(tmp_path / ("b" + name[1:]))]) == 1
    assert capsys.readouterr().err.rstrip().splitlines()[-1] in ("2 of 2 input(s) got no emotion",
                                                                 "2 of 2 input(s) failed")


def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path, capsys):
    """It used to surface after the data loaded (or the features were extracted), as a traceback for a file on the
    path and a bare '[Errno 2]' for /proc; nothing is left behind by the check."""
    (tmp_path / "notes.txt").write_text("a file")
    assert cli.output_folder_problem(tmp_path / "notes.txt" / "run") == f"{tmp_path / 'notes.txt'} is a file, not a folder"
    assert cli.output_folder_problem(tmp_path / "new" / "run") is None and sorted(tmp_path.iterdir()) == [
        tmp_path / "notes.txt"]
    if os.path.isdir("/proc/self"):
        assert cli.output_folder_problem("/proc/emotion_run").startswith("cannot write in /proc (")
    from fer.train import main as fer_train_main
    from ser.evaluate import main as ser_evaluate_main

    for main, args in ((fer_train_main, ["--output", str(tmp_path / "notes.txt" / "run"), "--epochs", "1"]),
                       (ser_evaluate_main, ["--output", str(tmp_path / "notes.txt" / "eval")])):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and "notes.txt is a file, not a folder" in capsys.readouterr().err


def test_ctrl_c_in_a_training_tool_is_one_line_saying_how_to_resume(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert cli.resumable_main(interrupted) == 130
    assert capsys.readouterr().err == "\ninterrupted: run the same command to resume from the last finished epoch\n"
    assert cli.resumable_main(lambda: 0) == 0


def test_progress_off_a_terminal_logs_now_and_then_when_asked(caplog, monkeypatch):
    """A long step writing to a log file (nohup) says how far it got; without log_every it stays silent."""
    import time

    clock = iter(range(0, 1000, 20))  # every item takes 20 s
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="progress"):
        assert list(cli.progress(range(5), desc="features", unit="clip", log_every=30)) == [0, 1, 2, 3, 4]
    assert [r.getMessage() for r in caplog.records] == ["features: 2 of 5 clip(s), 40 s", "features: 4 of 5 clip(s), 80 s"]
    caplog.clear()
    assert list(cli.progress(range(3), desc="x")) == [0, 1, 2] and not caplog.records
