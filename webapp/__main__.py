"""Start the server: ``python -m webapp --host 127.0.0.1 --port 8000 --models saved_models/``."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Sequence

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow
from core.config import add_dataclass_args, from_args
from webapp.app import Settings, with_late_fusion_weights

WS_SIZE_SLACK = 4  # the protocol layer drops messages over 4x the app limit; the app answers the rest
HELP = {
    "max_upload_bytes": "largest accepted upload (413 above)",
    "max_message_bytes": "largest WebSocket message answered with a result (a too_large error above)",
    "max_connections": "open live streams; more are closed with code 1013",
    "max_video_seconds": "seconds of an uploaded video that are analysed",
    "video_frames": "frames of an uploaded video looked at: 5 per second, at most this many (spread evenly)",
    "upload_workers": "file predictions running at once",
    "max_waiting_uploads": "uploads queued beyond those; more get 503",
    "upload_timeout_seconds": "an upload body must arrive within this many seconds (408 otherwise)",
    "max_uploads_per_client": "uploads one client address may have in progress at once (429 beyond)",
    "max_reading_uploads": "upload bodies received at once over all clients (503 beyond)",
    "silence_rms": "RMS below which the last silence-seconds of audio count as silence",
    "silence_seconds": "seconds of the latest audio whose RMS decides silence",
    "audio_window_seconds": "seconds of audio the voice model sees",
    "min_audio_seconds": "no voice estimate until the rolling audio window holds this many seconds",
    "voice_interval_seconds": "at most one new voice estimate per stream this often",
    "face_weight": "weight of the face in the fused probabilities",
    "fusion_rule": "how face and voice are fused: mean (weighted average) or product (weighted geometric mean); "
                   "a late_fusion.json sets it with its weights",
    "voice_weight": "weight of the voice in the fused probabilities",
    "fresh_seconds": "how long a face or voice estimate stays in the fusion",
    "max_frame_side": "live frames larger than this (pixels, longer side) are downscaled before face detection",
    "full_detect_every": "live frames: search the whole frame every Nth frame, near the last face otherwise",
    "track_pad": "live frames: the search region is the last face box grown by this many box sizes",
    "min_face_fraction": "live frames: the smallest face searched, as a share of the frame's shorter side "
                         "(0: the detector's default, 5 %%); with haar larger is faster but finds more false faces",
    "max_face_batch": "live frames of this many streams are analysed per tick, their faces in one model call",
    "max_voice_batch": "audio windows of this many streams go through the voice model in one call",
    "face_threads": "live frame ticks that run at once (a stream is in one at a time); more can pay on a machine "
                    "with more cores",
    "voice_max_share": "the voice thread works at most this share of the time (it rests after each batch): "
                       "under load frames keep the CPU and voice estimates come less often",
    "model_threads": "TensorFlow threads per model call (0: TensorFlow's default, all cores); 1 lets the face "
                     "and voice threads use one core each",
    "video_segment_seconds": "a video upload with ?segments=true gets one row per this many seconds",
    "detector": "face detector, one of fer.faces.DETECTORS (blazeface, blazeface-full, haar, mtcnn); empty: the "
                "face package's default, as fer.predict uses",
    "live_face_model": "the live stream's face model: a folder in the models folder, used when it exists (the "
                       "small fer_tiny: frames come many per second); uploads always use fer. Empty: fer",
    "live_face_tflite": "the live face model's exported file to run (float16 or int8, when the folder has it; "
                        "empty: its Keras model)",
    "warmup": "run each model once at start-up so the first request is fast",
}


def port_number(text: str) -> int:
    """argparse ``type`` for ``--port``: refused while parsing, not as a socket traceback after the models load."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 1-65535")
    return port


LOG_LEVELS = ("debug", "info", "warning", "error")


def listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port`` (an unknown host, a port in use), or None. Checked before
    uvicorn starts: its own bind error can come while TensorFlow's import holds stderr, and the message was lost
    (the process exited with status 3 and said nothing)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"--host {host}: {exc.strerror}"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def models_problem(folder: Path, live_face_model: str = "") -> str | None:
    """Why ``folder`` (resolved) will give the server no model at all, or None when it holds one or more."""
    from webapp.models import MODALITIES, MODEL_FILES

    if not folder.is_dir():
        return f"models folder {folder} does not exist"
    names = (*MODALITIES, *([live_face_model] if live_face_model else []))
    if any(all((folder / name / f).is_file() for f in MODEL_FILES) for name in names):
        return None
    return (f"models folder {folder} holds none of the expected models ({', '.join(f'{n}/' for n in names)}, "
            f"each {' + '.join(MODEL_FILES)})")


def tls_problem(certfile: str | None, keyfile: str | None) -> str | None:
    """Why the certificate / key cannot serve HTTPS, or None (also None without a certificate)."""
    if keyfile and not certfile:
        return "--ssl-keyfile needs --ssl-certfile"
    if not certfile:
        return None
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path and not os.path.isfile(path):
            return f"{flag} {path}: no such file"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        return f"--ssl-certfile {certfile}: not a usable PEM certificate and key ({exc.reason or exc})"
    except OSError as exc:
        return f"--ssl-certfile {certfile}: {exc.strerror or exc}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python -m webapp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8000, help="TCP port (default: 8000)")
    parser.add_argument("--models", default=None, help="folder holding ser/, fer/, fusion/ (each model.keras + "
                        "config.json) (default: the repository's saved_models, wherever the server is started "
                        "from, as the predict commands)")
    parser.add_argument("--late-fusion", default=None, help="late_fusion.json written by python -m fusion.late: "
                        "its audio/face weights and rule set the fusion (default: <models>/fusion/late_fusion.json, then <models>/late_fusion.json "
                        "when present and no weight is given on the command line)")
    parser.add_argument("--ssl-certfile", default=None, help="serve HTTPS (browsers only give camera access "
                        "to pages on localhost or HTTPS)")
    parser.add_argument("--ssl-keyfile", default=None, help="private key of --ssl-certfile")
    parser.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                        help="server log level (default: info)")
    add_dataclass_args(parser, Settings, HELP)
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from webapp.app import create_app

    try:
        settings = from_args(Settings, args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from fusion.late import SHIPPED_MODELS, find_late_fusion

    # The shipped folder by its absolute path, as fusion.predict finds it: a relative "saved_models" served no
    # models (and /api/health said "ok") when the server was started outside the repository.
    models_dir = Path(args.models).resolve() if args.models else SHIPPED_MODELS
    late = args.late_fusion or find_late_fusion(models_dir)
    weights_given = (settings.face_weight, settings.voice_weight) != (Settings.face_weight, Settings.voice_weight)
    if args.late_fusion or (late is not None and not weights_given):
        try:
            settings = with_late_fusion_weights(settings, late)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: --late-fusion {late}: {exc}", file=sys.stderr)
            return 2
        logging.info("fusion from %s: %s rule, face %.2f, voice %.2f", late, settings.fusion_rule,
                     settings.face_weight, settings.voice_weight)
    # A --models folder that does not exist is a typo, refused like a bad port; an existing one without models
    # is served with a warning (models can be put there and the server restarted).
    missing = f"--models {args.models}: no such folder" if args.models and not models_dir.is_dir() else None
    problem = missing or tls_problem(args.ssl_certfile, args.ssl_keyfile) or listen_problem(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    problem = models_problem(models_dir, settings.live_face_model)
    if problem:
        logging.warning("%s; the server starts with no models", problem)
    # The models load in a background thread: the port answers at once, /api/health says "loading".
    app = create_app(models_dir, settings)
    # No permessage-deflate: frames are JPEG already, and deflating every message costs both ends
    # CPU that the models need more. No access log unless debugging: the page polls /api/health.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                access_log=args.log_level.lower() == "debug",
                ws_max_size=WS_SIZE_SLACK * settings.max_message_bytes, ws_per_message_deflate=False,
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
