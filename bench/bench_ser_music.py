"""Music and other sounds against real speech: what the speech model refuses, and at which stage.

    python bench/bench_ser_music.py                       # saved_models/ser, the folders below where present
    python bench/bench_ser_music.py --music my/tracks --speech my/voices --out /tmp/music

Every item goes through ``SERPredictor`` as ``predict_waveform`` takes it: the signal check
(``ser.frontend.speech_check``: silence, hum, tones, noise) and then Whisper's no-speech probability
(``ser.whisper.no_speech``, for Whisper models). Reported per set: the share refused by each stage, the share
that gets an emotion, and the no-speech probabilities' spread.

- speech sets: clips as they are (every file under each ``--speech`` folder), and ``--noise-clips`` of the first
  set with white noise, and with music (the first music set's first tracks), at each of ``--snr`` below the
  speech's active level (``ser.frontend.active_rms``, pauses left out: stricter than
  ``ser.features.add_white_noise``'s whole-clip power); every refusal is a false one.
- music sets: ``--windows`` 3 s windows evenly spaced through every track under each ``--music`` folder;
  every window that gets an emotion is a miss. ``--sounds``: other non-speech files, whole.

The defaults are what this workplace has: RAVDESS actors 01-20 and TESS (the speech the threshold was chosen
on), Hedgewars' voice lines (other speakers and languages, cartoon voices, grunts and laughs among the words:
Debian ``hedgewars-data``), Wesnoth's orchestral tracks (the music the threshold was chosen on:
``wesnoth-1.16-music``), Hedgewars' game music and the freedesktop sound theme (``sound-theme-freedesktop``; its
spoken "front left" channel name moved to speech): the last two not looked at before the threshold was fixed.
Folders that are absent are left out, and said so.
Writes OUT/ser_music.md and OUT/ser_music.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, progress, quiet_tensorflow  # noqa: E402

DATA = REPO.parent / "shared" / "data"
WESNOTH = Path("/usr/share/games/wesnoth/1.16/data/core/music")
HEDGEWARS = Path("/usr/share/games/hedgewars/Data")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
DEFAULT_SPEECH = [DATA / "ravdess", DATA / "tess", HEDGEWARS / "Sounds" / "voices",
                  FREEDESKTOP / "audio-channel-front-left.oga"]
DEFAULT_MUSIC = [WESNOTH, HEDGEWARS / "Music"]
DEFAULT_SOUNDS = [FREEDESKTOP]
SPOKEN_THEME_SOUNDS = "audio-channel-"  # freedesktop's channel names are a voice saying them
SR = 16_000
WINDOW_SECONDS = 3.0
OTHER_THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)
BACKGROUND_TRACKS = 10  # tracks of the first music set played under the noisy speech clips


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_ser_music.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(REPO / "saved_models" / "ser"),
                        help="SER run folder (default: saved_models/ser)")
    parser.add_argument("--speech", nargs="+", default=None, help="speech files or folders, one set each "
                        "(default: RAVDESS, TESS, Hedgewars voices, freedesktop's spoken channel names)")
    parser.add_argument("--music", nargs="+", default=None,
                        help="music folders, one set each (default: Wesnoth's and Hedgewars' tracks)")
    parser.add_argument("--sounds", nargs="+", default=None,
                        help="other non-speech files or folders (default: the freedesktop sound theme)")
    parser.add_argument("--windows", type=int, default=10, help="3 s windows per music track (default: 10)")
    parser.add_argument("--noise-clips", type=int, default=90,
                        help="speech clips of the first speech set heard with noise (default: 90)")
    parser.add_argument("--snr", default="20,10,5", help="white-noise levels in dB SNR (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="folder for ser_music.md and ser_music.json (default: bench/results)")
    add_verbose_flag(parser)
    return parser


def files_of(target: Path) -> list[Path]:
    """The file, or every audio file below the folder (``.oga`` too: the freedesktop theme's Ogg files)."""
    from core.media_types import AUDIO_EXTENSIONS, files_below

    return [target] if target.is_file() else files_below(target, (*AUDIO_EXTENSIONS, ".oga"))


def verdict(predictor, y: np.ndarray) -> tuple[str, float | None]:
    """("speech" | "signal: <reason>" | "whisper", the lowest no-speech probability of its windows or None), as
    ``SERPredictor.predict_waveform`` decides: the item is refused by Whisper when every window is."""
    from ser.audio import AudioError
    from ser.frontend import no_speech_reason

    try:
        windows = predictor.speech_segments(y, SR)
    except AudioError as exc:  # no speech, or digital silence (a track's quiet end)
        reason = no_speech_reason(exc)
        if reason is None:
            raise
        return f"signal: {reason}", None
    _, heard = predictor.window_outputs([w for _, _, w in windows])
    known = [q for q in heard if q is not None]
    passed = any(predictor.hears(q, w)[0] for (_, _, w), q in zip(windows, heard))  # the predictor's own rule
    return ("speech" if passed else "whisper"), (min(known) if known else None)


def summarise(name: str, kind: str, outcomes: list[tuple[str, float | None]], unreadable: int) -> dict:
    n = len(outcomes)
    stages: dict[str, int] = {}
    for stage, _ in outcomes:
        stages[stage] = stages.get(stage, 0) + 1
    q = np.array([v for _, v in outcomes if v is not None])
    spread = {f"p{p}": round(float(np.percentile(q, p)), 3) for p in (0, 1, 5, 50, 95, 99, 100)} if q.size else {}
    signal = sum(v for k, v in stages.items() if k.startswith("signal"))
    return {"set": name, "kind": kind, "items": n, "unreadable": unreadable, "stages": stages,
            "emotion_rate": round(stages.get("speech", 0) / max(n, 1), 4),
            "refused_by_signal_rate": round(signal / max(n, 1), 4),
            "refused_by_whisper_rate": round(stages.get("whisper", 0) / max(n, 1), 4),
            "no_speech_probability": spread,
            # per item, so other thresholds can be scored from this file (null: refused before Whisper)
            "items_no_speech": [None if v is None else round(float(v), 4) for _, v in outcomes]}


def load(path: Path):
    from ser.audio import AudioError, load_audio

    try:
        return load_audio(path, SR).astype(np.float32)
    except AudioError:
        return None


def tracks(folder: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` readable audio files under ``folder`` at 16 kHz (none there: an empty list)."""
    return [y for y in (load(p) for p in files_of(folder)[:count]) if y is not None] if folder.exists() else []


def speech_set(predictor, target: Path, snr: list[float], noise_clips: int,
               background: list[np.ndarray] | None = None) -> list[dict]:
    """The set as it is; with ``snr``, also ``noise_clips`` of its clips under white noise and, with
    ``background`` (music tracks), under music, each at every level of ``snr`` below the speech."""
    from ser.features import mix_under
    from ser.frontend import active_rms

    files = files_of(target)
    background = background or []
    outcomes, noisy, unreadable = [], {s: [] for s in snr}, 0
    under_music: dict[float, list] = {s: [] for s in snr if background}
    every = max(1, len(files) // max(noise_clips, 1))
    rng = np.random.default_rng(0)
    for i, path in enumerate(progress(files, desc=target.name)):
        y = load(path)
        if y is None:
            unreadable += 1
            continue
        outcomes.append(verdict(predictor, y))
        if not snr or i % every or len(noisy[snr[0]]) >= noise_clips:
            continue
        level = active_rms(y)  # the speech's own level, pauses left out (the signal check's real-data test)
        for s in snr:
            noise = rng.normal(0.0, level * 10 ** (-s / 20), y.size).astype(np.float32)
            noisy[s].append(verdict(predictor, y + noise))
        if background:
            track = background[len(under_music[snr[0]]) % len(background)]
            start = int(rng.integers(0, max(1, track.size - y.size)))
            music = np.resize(track[start:start + y.size], y.size)
            for s in snr:
                under_music[s].append(verdict(predictor, mix_under(y, music, s)))
    rows = [summarise(str(target), "speech", outcomes, unreadable)]
    rows += [summarise(f"{target} + white noise {s:g} dB below the speech", "speech", noisy[s], 0)
             for s in snr if noisy[s]]
    rows += [summarise(f"{target} + music {s:g} dB below the speech", "speech", under_music[s], 0)
             for s in under_music if under_music[s]]
    return rows


def music_set(predictor, target: Path, windows: int) -> dict:
    outcomes, unreadable = [], 0
    size = int(WINDOW_SECONDS * SR)
    for path in progress(files_of(target), desc=target.name):
        y = load(path)
        if y is None or y.size < size:
            unreadable += 1
            continue
        for start in np.linspace(0, y.size - size, windows).astype(int):
            outcomes.append(verdict(predictor, y[start:start + size]))
    return summarise(str(target), "music", outcomes, unreadable)


def sounds_set(predictor, target: Path) -> dict:
    outcomes, unreadable = [], 0
    for path in progress([p for p in files_of(target) if SPOKEN_THEME_SOUNDS not in p.name], desc=target.name):
        y = load(path)
        if y is None:
            unreadable += 1
            continue
        outcomes.append(verdict(predictor, y))
    return summarise(str(target), "sounds", outcomes, unreadable)


LATENCY_SNIPPET = """
import json, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from ser.audio import load_audio
from ser.predict import SERPredictor
from ser.whisper.encoder import WhisperFeatureConfig
if not {check!r}:  # the predictor as it was before the check: the decoder step never runs
    WhisperFeatureConfig.hears_no_speech = property(lambda self: False)
p = SERPredictor({run!r})
y = load_audio({clip!r})[: 3 * 16000]
for _ in range(5):
    p.window_outputs([y])
times = []
for _ in range(30):
    t = time.process_time(); p.window_outputs([y]); times.append(time.process_time() - t)
print(json.dumps({{"ms": 1000 * float(np.median(times))}}))
"""


def cost_one_core(model_dir: str, clip: Path) -> dict:
    """CPU ms per 3 s window through the predictor (signal check excluded), with and without the no-speech step,
    each in a fresh process pinned to one core."""
    from bench_ser import run_on_one_core  # bench/ is on sys.path when this script runs

    out = {}
    for check in (False, True):
        code = LATENCY_SNIPPET.format(repo=str(REPO), run=model_dir, clip=str(clip), check=check)
        out["with_check" if check else "without_check"] = round(run_on_one_core(code)["ms"], 1)
    return {**out, "clip": str(clip)}


def markdown(rows: list[dict], cost: dict | None, threshold: float, skipped: list[str]) -> str:
    from ser.predict import no_speech_threshold

    lines = ["Refusals of speech (false) and of music and other sounds (right), by stage, through "
             "`SERPredictor` as `ser.predict`, the server and the live page use it: the signal check "
             "(`ser.frontend`), then Whisper's no-speech probability (`ser.whisper.no_speech`, refused at >= "
             f"{threshold:g} in a window with 3 s of sound or more, higher for less sound, up to "
             f"{no_speech_threshold(0.0):g}: `ser.predict.no_speech_threshold`).", "",
             "| set | kind | items | gets an emotion | refused: signal check | refused: Whisper | "
             "no-speech probability p0 / p5 / p50 / p95 / p100 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["no_speech_probability"]
        spread = " / ".join(f"{q[k]:.2f}" for k in ("p0", "p5", "p50", "p95", "p100")) if q else "-"
        lines.append(f"| {r['set']} | {r['kind']} | {r['items']} | {100 * r['emotion_rate']:.1f} % | "
                     f"{100 * r['refused_by_signal_rate']:.1f} % | {100 * r['refused_by_whisper_rate']:.1f} % | "
                     f"{spread} |")
    lines += ["", "The same sets at other fixed thresholds (whatever a window's length: the rule before stop 44 was "
              "0.6 for every window): the share that gets an emotion (speech sets: higher is better; music and "
              "sounds: lower is better).", "",
              "| set | " + " | ".join(f"at {t:g}" for t in OTHER_THRESHOLDS) + " |",
              "|---|" + "---|" * len(OTHER_THRESHOLDS)]
    for r in rows:
        n = max(r["items"], 1)
        rates = [sum(v is not None and v < t for v in r["items_no_speech"]) / n for t in OTHER_THRESHOLDS]
        lines.append(f"| {r['set']} | " + " | ".join(f"{100 * x:.1f} %" for x in rates) + " |")
    lines.append("")
    if cost:
        lines.append("- CPU time per 3 s window through the predictor (log-mel, encoder, head; one core, median of "
                     f"30): {cost['without_check']} ms without the no-speech step, {cost['with_check']} ms with it "
                     f"({Path(cost['clip']).name}).")
    lines.append("- Music: evenly spaced 3 s windows of each track. Speech with noise: every n-th clip of the set.")
    lines += [f"- Not found here, left out: {s}" for s in skipped]
    return "\n".join(lines) + "\n"


class Sets:
    """Finished sets of an interrupted run (the same options), kept in OUT/ser_music.partial.json: a run takes
    ~25 minutes on 2 cores, and a crash in the last set should not cost the others."""

    def __init__(self, path: Path, args: argparse.Namespace):
        from core.io import read_json

        self.path = path
        self.options = {k: v for k, v in vars(args).items() if k not in ("out", "verbose")}
        saved = read_json(path) if path.is_file() else {}
        self.sets: dict = saved.get("sets", {}) if saved.get("options") == self.options else {}

    def get(self, target: Path, measure) -> list[dict]:
        from core.io import write_json

        if str(target) not in self.sets:
            self.sets[str(target)] = measure()
            write_json(self.path, {"options": self.options, "sets": self.sets})
        return self.sets[str(target)]


def main() -> None:
    args = build_parser().parse_args()
    from core.io import write_json
    from ser.predict import SERPredictor
    from ser.whisper.no_speech import NO_SPEECH_THRESHOLD

    snr = [float(s) for s in args.snr.split(",") if s.strip()]
    if args.windows < 1:
        raise SystemExit(f"--windows must be >= 1, got {args.windows}")
    speech = [Path(p) for p in (args.speech or DEFAULT_SPEECH)]
    music = [Path(p) for p in (args.music or DEFAULT_MUSIC)]
    sounds = [Path(p) for p in (args.sounds or DEFAULT_SOUNDS)]
    skipped = [str(p) for p in speech + music + sounds if not p.exists()]
    predictor = SERPredictor(args.model_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = Sets(out / "ser_music.partial.json", args)
    rows: list[dict] = []
    first_music = next((p for p in music if p.exists()), None)
    background = tracks(first_music, BACKGROUND_TRACKS) if first_music else []
    for i, target in enumerate(p for p in speech if p.exists()):
        rows += done.get(target, lambda: speech_set(predictor, target, snr if i == 0 else [], args.noise_clips,
                                                    background))
    for target in (p for p in music if p.exists()):
        rows += done.get(target, lambda: [music_set(predictor, target, args.windows)])
    for target in (p for p in sounds if p.exists()):
        rows += done.get(target, lambda: [sounds_set(predictor, target)])
    clips = files_of(speech[0]) if speech[0].exists() else []
    hears = getattr(predictor.features, "hears_no_speech", False)
    cost = cost_one_core(args.model_dir, clips[0]) if hears and clips else None
    write_json(out / "ser_music.json", {"model_dir": args.model_dir, "threshold": NO_SPEECH_THRESHOLD,
                                        "sets": rows, "cost": cost, "skipped": skipped})
    text = markdown(rows, cost, NO_SPEECH_THRESHOLD, skipped)
    (out / "ser_music.md").write_text(text)
    done.path.unlink(missing_ok=True)
    print(text)


if __name__ == "__main__":
    quiet_tensorflow()
    main()
