"""Predict emotions of audio files: ``python -m ser.predict clip.wav more/ --json``.

Models see ``max_seconds`` of speech (3 s for the shipped one). A longer recording is trimmed of
silence at both ends and cut into windows of that length every ``hop`` seconds (the last one flush
with the end); windows with no sound above the trim threshold are dropped, so are windows with less
than a third of their length in speech when others have more, and the recording's probabilities are the
mean over the rest. ``--segments`` prints each window's own result. A recording
no longer than one window goes through the model exactly as clips do in training and ``ser.evaluate``.

Every window must hold speech (``ser.frontend.speech_check``): windows of hum, a steady tone, noise or
DC are dropped; so are windows in which a Whisper model's own decoder hears no speech (music and other
sounds: ``ser.whisper.no_speech``). A file with none left is reported as "no speech" (a warning on stderr;
with ``--json`` a line ``{"path": ..., "label": null, "probabilities": null, "no_speech": "<reason>"}``)
instead of an emotion.

Exit status: 0 every file got an emotion; 1 some file was unreadable or held no speech (the others
are still printed); 2 usage error (no model, no audio files).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from core.io import ModelFolderError, load_keras_model, read_model_config
from ser.audio import AudioError, check_signal, decode, resample
from ser.corpora import AUDIO_EXTENSIONS, audio_files
from ser.features import Normalizer, load_feature_config, pad, waveform_frames, waveform_frames_batch
from ser.frontend import NoSpeechError, speech_check
from ser.whisper.no_speech import NO_SPEECH_THRESHOLD

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "saved_models" / "ser"
DEFAULT_HOP_SECONDS = 1.5


# A window that catches only the edge of an utterance is judged as if it were all of it (the model trims the
# silence around it). On recordings of TESS clips joined by pauses (bench/bench_ser_windows.py), windows with
# under 1 s of speech of their 3 s were right 0.40 of the time, fuller ones 0.49; the recordings' accuracy does
# not move measurably (0.560 without them, 0.571 with). Left out when the recording has fuller windows, so that
# --segments does not list labels read from a sliver.
MIN_WINDOW_SPEECH_SHARE = 1 / 3


def check_hop(hop_seconds: float, window_seconds: float) -> None:
    """A hop longer than the window would leave stretches of the recording unheard, without saying so."""
    if hop_seconds > window_seconds:
        raise ValueError(f"hop {hop_seconds:g} s is longer than the model's {window_seconds:g} s window: the speech "
                         "between windows would never be heard; use a hop of at most the window")


def speech_windows(y: np.ndarray, cfg: FeatureConfig, hop_seconds: float | None = None
                   ) -> list[tuple[float, float, np.ndarray]]:
    """``(start_s, end_s, samples)`` windows of a mono waveform at ``cfg.sample_rate``.

    Times are seconds in the original recording. A recording no longer than ``cfg.max_seconds`` after
    trimming comes back whole and untrimmed, so its features are exactly those of training.
    """
    import librosa

    if hop_seconds is None:  # 1.5 s, or the window of a model that hears less
        hop_seconds = min(DEFAULT_HOP_SECONDS, cfg.max_seconds)
    if hop_seconds <= 0:
        raise ValueError(f"hop must be > 0 seconds, got {hop_seconds}")
    check_hop(hop_seconds, cfg.max_seconds)
    sr, size = cfg.sample_rate, int(cfg.max_seconds * cfg.sample_rate)
    if y.size <= size:  # live-page chunks and corpus clips: no second trim, frames_from_waveform trims
        return [(0.0, y.size / sr, y)]
    start, end = 0, y.size
    if cfg.trim_db > 0:
        start, end = librosa.effects.trim(y, top_db=cfg.trim_db)[1]
    if end - start <= size:
        return [(0.0, y.size / sr, y)]
    hop = max(1, int(hop_seconds * sr))
    starts = list(range(start, end - size + 1, hop))
    if starts[-1] + size < end:
        starts.append(end - size)
    # A pause longer than a window would otherwise be classified like speech.
    floor = np.abs(y[start:end]).max() * 10 ** (-cfg.trim_db / 20) if cfg.trim_db > 0 else 0.0
    windows = [(s / sr, (s + size) / sr, y[s:s + size]) for s in starts]
    voiced = [w for w in windows if np.abs(w[2]).max() > floor]
    return voiced or windows[:1]


SHORT_SOUND_SECONDS = 3.0   # windows with less sound than this get a higher no-speech threshold (exp47)
SHORT_SOUND_STEP = 0.1      # per second of sound under SHORT_SOUND_SECONDS
SHORT_SOUND_CAP = 0.85


def no_speech_threshold(seconds: float | None = None) -> float:
    """The no-speech probability at which a window holding ``seconds`` of sound is refused. Whisper's no-speech
    probability rises as the sound in its 30 s window gets shorter, speech's as music's (runs/exp47: real speech's 99th
    percentile 0.74 at 1 s and 0.60 at 2 s, music's 1st 0.85 and 0.71), so the threshold rises with it: from
    NO_SPEECH_THRESHOLD at 3 s (whole clips) by 0.1 a second to 0.85 (None: NO_SPEECH_THRESHOLD)."""
    if seconds is None:
        return NO_SPEECH_THRESHOLD
    raised = NO_SPEECH_THRESHOLD + SHORT_SOUND_STEP * (SHORT_SOUND_SECONDS - seconds)
    return max(NO_SPEECH_THRESHOLD, min(SHORT_SOUND_CAP, raised))


def hears_speech(no_speech_probability: float | None, seconds: float | None = None) -> bool:
    """Whether Whisper's no-speech probability of a window holding ``seconds`` of sound lets it through (None: the
    model cannot tell)."""
    return no_speech_probability is None or no_speech_probability < no_speech_threshold(seconds)


def strongest_refusal(refusals: Sequence[NoSpeechError]) -> NoSpeechError:
    """The one that speaks for a recording none of whose windows holds speech: Whisper's surest."""
    return max(refusals, key=lambda e: e.no_speech_probability or 0.0)


class SERPredictor:
    """A trained SER run folder (model.keras, config.json, normalization.npz) ready for fast inference."""

    def __init__(self, model_dir: str | os.PathLike | None = None, tflite: str | None = None):
        """``tflite``: None for the Keras model, or ``float16`` / ``int8`` for an exported file (ser.export)."""
        import tensorflow as tf

        self.model_dir = Path(model_dir or DEFAULT_MODEL_DIR)
        config_path = self.model_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no SER model in {self.model_dir} (config.json missing); train one with "
                                    f"`python -m ser.train --output DIR` and pass --model-dir DIR")
        self.config = read_model_config(config_path, "ser", required=("class_names",))
        self.class_names: list[str] = self.config["class_names"]
        # An ensemble of runs with different front ends (e.g. Whisper + MFCC) averages its members' outputs.
        self.members = [SERPredictor(self.model_dir / m, tflite) for m in self.config.get("members_dirs", [])]
        if self.members:
            self.features, self.normalizer, self.model = self.members[0].features, None, None
            return
        if "features" not in self.config:
            raise ModelFolderError(f"{config_path}: lacks 'features', so it is not a speech (ser) model; pass a "
                                   "folder written by `python -m ser.train --output DIR`")
        self.features = load_feature_config(self.config["features"])
        try:
            self.normalizer = Normalizer.load(self.model_dir / "normalization.npz")
        except Exception as exc:  # missing (OSError), truncated (BadZipFile), another kind of .npz (KeyError)
            raise ModelFolderError(f"{self.model_dir / 'normalization.npz'}: missing or damaged ({exc}); copy the "
                                   "run folder again or retrain it") from None
        if tflite:
            from core.export import TFLiteModel

            self.model = None
            self._infer = TFLiteModel(self.model_dir / f"model_{tflite}.tflite",
                                      export_command=f"python -m ser.export --model-dir {self.model_dir}")
            return
        import ser.layers  # noqa: F401 - registers the custom layers (masking, pooling) that model files name

        self.model = load_keras_model(self.model_dir / "model.keras")
        spec = tf.TensorSpec([None, *self.config["input_shape"]], tf.float32)
        # One traced graph instead of model.predict(): ~1 ms per call instead of 50-90 ms.
        graph = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        self._infer = lambda x: graph(x).numpy()

    def features_of(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Normalised model input (1, frames, features) for the first window of a waveform."""
        y = resample(check_signal(np.asarray(y, np.float32)), sr, self.features.sample_rate)
        x, lengths = pad([waveform_frames(y, self.features)], self.features.max_frames)
        return self.normalizer.transform(x, lengths)

    def speech_segments(self, y: np.ndarray, sr: int, hop_seconds: float | None = None,
                        source: str = "audio") -> list[tuple[float, float, np.ndarray]]:
        """``speech_windows`` of a waveform (resampled to the model's rate) that hold speech.

        NoSpeechError (naming ``source`` and what was found) when none does; AudioError if empty or silent.
        """
        y = resample(check_signal(np.asarray(y, np.float32), source), sr, self.features.sample_rate)
        windows = speech_windows(y, self.features, hop_seconds)
        checks = [speech_check(w, self.features.sample_rate) for _, _, w in windows]
        kept = [w for w, c in zip(windows, checks) if c.is_speech]
        if not kept:
            # the most common reason speaks for the file (every window of a hum file says "hum")
            reasons = [c.reason for c in checks]
            worst = checks[reasons.index(max(set(reasons), key=reasons.count))]
            raise NoSpeechError(f"{source}: no speech: {worst.detail}", worst.reason)
        least = MIN_WINDOW_SPEECH_SHARE * self.features.max_seconds
        full = [w for w, c in zip(windows, checks) if c.is_speech and c.active_seconds >= least]
        return full or kept  # a recording of short words only keeps them all

    def predict_segments(self, y: np.ndarray, sr: int, hop_seconds: float | None = None,
                         source: str = "audio") -> list[tuple[float, float, np.ndarray]]:
        """``(start_s, end_s, probabilities)`` for each window of speech in a waveform (see ``speech_windows``).

        NoSpeechError when no window holds speech; AudioError if the waveform is empty or silent.
        """
        windows = self.speech_segments(y, sr, hop_seconds, source)
        heard = self.window_results([w for _, _, w in windows], source)
        kept = [(start, end, p) for (start, end, _), p in zip(windows, heard) if not isinstance(p, NoSpeechError)]
        if not kept:
            raise strongest_refusal(heard)  # type: ignore[arg-type]
        return kept

    def window_results(self, waveforms: Sequence[np.ndarray], source: str = "audio"
                       ) -> list[np.ndarray | NoSpeechError]:
        """Each waveform's probabilities (as ``window_probabilities``), or NoSpeechError (reason "other sound")
        where the model's Whisper encoder hears no speech in it: music and other sounds that pass
        ``speech_check``. Models without that encoder (MFCC / log-mel) answer every waveform."""
        probs, no_speech = self.window_outputs(waveforms)
        out: list[np.ndarray | NoSpeechError] = []
        for p, q, w in zip(probs, no_speech, waveforms):
            heard, seconds = self.hears(q, w)
            if heard:
                out.append(p)
                continue
            rule = f"speech < {no_speech_threshold(seconds):.2f}" + ("" if seconds is None else
                                                                   f" for {seconds:.1f} s of sound")
            out.append(NoSpeechError(f"{source}: no speech: Whisper hears no speech in it (no-speech probability "
                                     f"{q:.2f}; {rule}): music or another sound", "other sound",
                                     no_speech_probability=q))
        return out

    def hears(self, no_speech_probability: float | None, waveform: np.ndarray) -> tuple[bool, float | None]:
        """(whether the window passes Whisper's check, the seconds of sound it was judged by: None when not needed)."""
        # below the lowest threshold a window passes whatever its length: no need to measure it
        q = no_speech_probability
        seconds = None if q is None or q < NO_SPEECH_THRESHOLD else self.sound_seconds(waveform)
        return hears_speech(q, seconds), seconds

    def sound_seconds(self, waveform: np.ndarray) -> float | None:
        """Seconds of sound the Whisper encoder sees in ``waveform`` (trimmed and cut as its features prepare it);
        None for a model without one."""
        features = next((m.features for m in self.members if hasattr(m.features, "prepare")), None) \
            if self.members else getattr(self, "features", None)
        if not hasattr(features, "prepare"):
            return None
        return features.prepare(np.asarray(waveform, np.float32)).size / features.sample_rate

    def window_probabilities(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """(n, classes) for waveforms at the model's rate, each treated as one clip (trimmed, first window); no
        speech check of any kind (``window_results`` has Whisper's)."""
        return self.window_outputs(waveforms, no_speech=False)[0]

    def window_outputs(self, waveforms: Sequence[np.ndarray], no_speech: bool = True
                       ) -> tuple[np.ndarray, list[float | None]]:
        """``window_probabilities`` and each waveform's Whisper no-speech probability from the same encoding
        (None without ``no_speech``, for models without a Whisper encoder in trailing silence; in an ensemble,
        the first member's that has one)."""
        if self.members:
            outputs = [m.window_outputs(waveforms, no_speech) for m in self.members]
            heard = next((q for _, q in outputs if any(v is not None for v in q)), outputs[0][1])
            return np.mean([p for p, _ in outputs], axis=0), heard
        if hasattr(self.features, "frames_and_no_speech"):
            frames, heard = self.features.frames_and_no_speech(list(waveforms), no_speech)
        else:
            frames, heard = waveform_frames_batch(list(waveforms), self.features), [None] * len(waveforms)
        x, lengths = pad(frames, self.features.max_frames)
        return np.asarray(self._infer(self.normalizer.transform(x, lengths))), heard

    def clip_probabilities(self, clips: Sequence, n_jobs: int = -1) -> tuple[list, np.ndarray, dict[str, str]]:
        """``(readable clips, probabilities, errors)`` for corpus clips, features as in training (ser.evaluate)."""
        from ser.dataset import extract_clips

        if self.members:
            outputs = [m.clip_probabilities(clips, n_jobs) for m in self.members]
            kept = set.intersection(*({c.path for c in out[0]} for out in outputs))
            rows = [np.array([p for c, p in zip(out[0], out[1]) if c.path in kept]) for out in outputs]
            return [c for c in outputs[0][0] if c.path in kept], np.mean(rows, axis=0), outputs[0][2]
        clips, feats, errors = extract_clips(clips, self.features, None, n_jobs)
        x, lengths = pad(feats, self.features.max_frames)
        x = self.normalizer.transform(x, lengths)
        probs = np.concatenate([self._infer(x[i:i + 256]) for i in range(0, len(x), 256)]) if len(x) else np.zeros((0, 7))
        return clips, probs, errors

    def predict_waveform(self, y: np.ndarray, sr: int, hop_seconds: float | None = None) -> np.ndarray:
        """Probabilities (7,) for a mono waveform, averaged over its windows of speech; NoSpeechError without
        speech, AudioError if empty or silent."""
        return np.mean([p for _, _, p in self.predict_segments(y, sr, hop_seconds)], axis=0)

    def predict_file(self, path: str | os.PathLike, hop_seconds: float | None = None,
                     segments: bool = False) -> dict:
        """``result()`` of a file; with ``segments`` it also lists every window's start, end and label.

        NoSpeechError when the file holds no speech, other AudioErrors when it cannot be used.
        """
        y, sr = decode(path)
        check_signal(y, str(path))
        parts = self.predict_segments(y, sr, hop_seconds, source=str(path))
        out = self.result(str(path), np.mean([p for _, _, p in parts], axis=0))
        if segments:
            out["segments"] = [{"start": round(start, 3), "end": round(end, 3), **self.scores(p)}
                               for start, end, p in parts]
        return out

    def scores(self, probs: np.ndarray) -> dict:
        return {"label": self.class_names[int(np.argmax(probs))],
                "probabilities": {name: round(float(p), 6) for name, p in zip(self.class_names, probs)}}

    def result(self, path: str, probs: np.ndarray) -> dict:
        return {"path": path, **self.scores(probs)}


def expand_paths(paths: Sequence[str]) -> list[Path]:
    """Files as given, folders expanded to the audio files below them."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(audio_files(p) if p.is_dir() else [p])
    return out


def build_parser() -> argparse.ArgumentParser:
    from core.cli import CLIParser, add_verbose_flag, module_prog, path_arg

    parser = CLIParser(
        prog=module_prog(__name__), description="Predict the emotion of speech recordings.",
        epilog="exit status: 0 every file got an emotion; 1 some file was unreadable or held no speech; 2 usage error")
    parser.add_argument("paths", nargs="+", type=path_arg, help="audio files or folders (any common format)")
    parser.add_argument("--model-dir", default=None, help=f"trained run folder (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--json", action="store_true", help="one JSON object per line: path, label, probabilities "
                        "(label null and no_speech: reason for a file without speech)")
    parser.add_argument("--tflite", choices=["float16", "int8"], default=None,
                        help="run the exported TFLite file instead of the Keras model (see ser.export)")
    parser.add_argument("--hop", type=float, default=None,
                        help="seconds between the windows of a recording longer than the model's window "
                             f"(at most that window, 3 s for the shipped models; default {DEFAULT_HOP_SECONDS}, or "
                             "the window if shorter)")
    parser.add_argument("--segments", action="store_true", help="also show each window's own result")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from core.cli import echo, none_exist, progress

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hop is not None and not (np.isfinite(args.hop) and args.hop > 0):
        parser.error(f"--hop must be a finite number of seconds > 0, got {args.hop}")
    files = expand_paths(args.paths)  # before the model loads: an empty folder is a usage error, found at once
    if not files:
        print(f"error: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in {args.paths}", file=sys.stderr)
        return 2
    if none_exist(files):  # said at once, not after the model loads
        return 1
    try:
        predictor = SERPredictor(args.model_dir, tflite=args.tflite)
    except (FileNotFoundError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.hop is not None:
        try:  # the window is the model's: known once its config is read, before any recording is
            check_hop(args.hop, predictor.features.max_seconds)
        except ValueError as exc:
            parser.error(f"--hop: {exc}")
    failures = 0
    for path in progress(files, desc="recordings", unit="file"):
        try:
            result = predictor.predict_file(path, args.hop, args.segments)
        except NoSpeechError as exc:  # not an error in the file: reported, and the exit status says so
            failures += 1
            echo(f"warning: {exc}", err=True)
            if args.json:
                echo(json.dumps({"path": str(path), "label": None, "probabilities": None, "no_speech": exc.reason}))
            continue
        except (AudioError, FileNotFoundError) as exc:
            failures += 1
            echo(f"error: {exc}", err=True)
            continue
        if args.json:
            echo(json.dumps(result))
        else:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
            echo(f"{path}: {result['label']}  [{probs}]")
            for seg in result.get("segments", []):
                echo(f"  {seg['start']:7.2f}-{seg['end']:7.2f} s  {seg['label']}")
    if failures:
        echo(f"{failures} of {len(files)} input(s) got no emotion", err=True)
    return 1 if failures else 0


if __name__ == "__main__":
    from core.cli import quiet_tensorflow

    quiet_tensorflow()
    sys.exit(main())
