"""Bad and odd inputs across the CLIs, the HTTP API and the WebSocket (GitHub issue 15; docs/reliability.md).

Every case asserts the exact outcome: a clean one-line error (no traceback), the exit status, no model left
behind by a refused run, valid JSON out of the server, and a server that still answers /api/health.
Fast: tiny synthetic models and media only.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import shutil
import struct
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import synth_audio as synth
import synth_media as sm
from webapp.app import Settings, create_app
from webapp.models import Models
from webapp.stream import BINARY_HEADER

SMALL = dict(max_upload_bytes=400_000, max_message_bytes=200_000, max_connections=3, warmup=False,
             min_audio_seconds=0.25)


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as browsers' JSON.parse does."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def assert_clean(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    assert "error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny real SER / FER run folders, plus copies to break."""
    root = sm.train_tiny_models(tmp_path_factory.mktemp("models"))
    return root


@pytest.fixture()
def broken(models, tmp_path):
    """A fresh copy of both run folders to damage."""
    shutil.copytree(models / "ser", tmp_path / "ser")
    shutil.copytree(models / "fer", tmp_path / "fer")
    return tmp_path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    jpeg = sm.jpeg_bytes(sm.face_image())
    (folder / "face.jpg").write_bytes(jpeg)
    (folder / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "garbage.wav").write_bytes(b"this is not audio at all" * 40)
    sm.write_wav(folder / "short.wav", sm.voice(0.05))
    sm.write_wav(folder / "speech.wav", sm.voice(1.0))
    (folder / "afile").write_text("not a folder")
    return folder


# ---- 1. argument checks before any data is loaded -------------------------------------------------

TRAIN_CASES = [
    ("ser.train", ["--epochs", "0"], "--epochs must be > 0"),
    ("ser.train", ["--epochs", "-1"], "--epochs must be > 0"),
    ("ser.train", ["--batch-size", "0"], "--batch-size must be > 0"),
    ("ser.train", ["--learning-rate", "nan"], "--learning-rate must be a finite number"),
    ("ser.train", ["--max-seconds", "inf"], "--max-seconds must be a finite number"),
    ("ser.train", ["--val-fraction", "1.5"], "--val-fraction must be from 0 to below 1"),
    ("ser.train", ["--val-fraction", "0.6", "--test-fraction", "0.5"], "must be below 1"),
    ("ser.train", ["--model", "transformer"], "unknown --model 'transformer'"),
    ("ser.train", ["--split", "by-corpus"], "unknown --split"),
    ("ser.train", ["--schedule", "step"], "unknown --schedule"),
    ("ser.train", ["--n-jobs", "0"], "--n-jobs must be -1"),
    ("ser.train", ["--patience", "-3"], "--patience must be >= 0"),
    ("ser.train", ["--augment", "-1"], "--augment must be >= 0"),
    ("ser.train", ["--phases", "0"], "--phases must be a whole number from 1 to 8"),
    ("ser.train", ["--phases", "2", "--trim", "samples"], "has no grid to average over"),
    ("ser.crossval", ["--folds", "0"], "--folds must be > 0"),
    ("fer.train", ["--epochs", "0"], "--epochs must be > 0"),
    ("fer.train", ["--batch-size", "0"], "--batch-size must be > 0"),
    ("fer.train", ["--model", "vit"], "unknown --model 'vit'"),
    ("fer.train", ["--dataset", "affectnet"], "unknown --dataset"),
    ("fer.train", ["--dropout", "1.0"], "--dropout must be from 0 to below 1"),
    ("fer.train", ["--learning-rate", "-0.1"], "--learning-rate must be > 0"),
    ("fer.train", ["--detector", "dlib"], "choose one of blazeface, blazeface-full, haar, mtcnn, none"),
    ("fer.evaluate", ["--detector", "dlib"], "choose one of blazeface, blazeface-full, haar, mtcnn, none"),
    ("fer.evaluate", ["--split", "holdout"], "unknown --split 'holdout'; choose one of all, train, val, test"),
    ("fer.evaluate", ["--dataset", "bogus"], "unknown --dataset 'bogus'; choose one of fer2013, jaffe, ckplus"),
    ("fusion.train", ["--epochs", "0"], "--epochs must be > 0"),
    ("fusion.train", ["--alpha", "-1"], "--alpha must be > 0"),
    ("fusion.train", ["--clipnorm", "0"], "--clipnorm must be > 0"),
]


def test_fusion_train_names_an_unknown_temporal_reader_before_reading_data(tmp_path, capsys):
    from fusion import train

    assert train.main(["--temporal", "gru", "--output", str(tmp_path / "run"),
                       "--data-dir", str(tmp_path / "no-data")]) == 2
    err = capsys.readouterr().err
    assert "--temporal must be one of" in err and "no-data" not in err


@pytest.mark.parametrize("module,args,message", TRAIN_CASES, ids=[f"{m}{' '.join(a)}" for m, a, _ in TRAIN_CASES])
def test_bad_training_argument_is_refused_before_loading_data(module, args, message, tmp_path, capsys, monkeypatch):
    import importlib

    train = importlib.import_module(module)
    out = tmp_path / "run"
    loaded = []
    monkeypatch.setattr("ser.corpora.load_clips", lambda *a, **k: loaded.append(1) or ([], []), raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--output", str(out), "--data-dir", str(tmp_path / "no-data")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert_clean(err, message)
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not out.exists(), "a refused run must leave no run folder (and so no model that looks finished)"
    assert not loaded


def test_output_that_is_a_file_is_refused(files, capsys):
    from ser import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--output", str(files / "afile")])
    assert exit_info.value.code == 2
    assert_clean(capsys.readouterr().err, "is an existing file")
    assert (files / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("args,message", [(["--output", "AFILE"], "is an existing file"),
                                          (["--n-jobs", "0"], "--n-jobs must be -1"),
                                          (["--n-jobs", "-7"], "--n-jobs must be -1")])
def test_ser_evaluate_bad_arguments_before_loading(models, files, args, message, capsys):
    from ser import evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--model-dir", str(models / "ser"), *[str(files / "afile") if a == "AFILE" else a
                                                             for a in args]])
    assert exit_info.value.code == 2
    assert_clean(capsys.readouterr().err, message)


@pytest.mark.parametrize("hop", ["nan", "inf", "0", "-1"])
def test_ser_predict_bad_hop(models, files, hop, capsys):
    from ser import predict

    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(files / "speech.wav"), "--model-dir", str(models / "ser"), "--hop", hop])
    assert exit_info.value.code == 2
    assert_clean(capsys.readouterr().err, "--hop must be a finite number of seconds > 0")


def test_ser_predict_hop_longer_than_the_window_is_refused(models, files, capsys):
    """A hop past the window would skip the speech between windows without a word."""
    from ser import predict
    from ser.features import load_feature_config

    window = load_feature_config(json.loads((models / "ser" / "config.json").read_text())["features"]).max_seconds
    assert predict.main([str(files / "speech.wav"), "--model-dir", str(models / "ser"), "--hop", str(window)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(files / "speech.wav"), "--model-dir", str(models / "ser"), "--hop", str(window + 0.5)])
    assert exit_info.value.code == 2
    assert_clean(capsys.readouterr().err, "longer than the model's")


@pytest.mark.parametrize("margin", ["-1", "nan", "inf"])
def test_fer_predict_bad_margin(models, files, margin, capsys):
    from fer import predict

    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(files / "face.jpg"), "--model-dir", str(models / "fer"), "--margin", margin])
    assert exit_info.value.code == 2
    assert_clean(capsys.readouterr().err, "--margin must be a number from 0 to 2")


@pytest.mark.parametrize("target", ["afile", "afile/inside"])
def test_fer_predict_annotate_into_a_file_is_refused(models, files, target, capsys):
    from fer import predict

    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(files / "face.jpg"), "--model-dir", str(models / "fer"), "--annotate",
                      str(files / target)])
    assert exit_info.value.code == 2
    assert_clean(capsys.readouterr().err, "is a file, not a folder")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_fer_predict_annotate_where_nothing_can_be_written_is_refused_up_front(models, files, capsys):
    """/proc takes no new folders, even from root, whom os.access lets through."""
    from fer import predict

    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(files / "face.jpg"), "--model-dir", str(models / "fer"), "--annotate",
                      "/proc/emotion-toolkit-annotate"])
    assert exit_info.value.code == 2
    assert_clean(capsys.readouterr().err, "cannot write there")


def test_fer_predict_annotate_failure_skips_one_image_and_goes_on(models, files, tmp_path, capsys):
    from fer import predict

    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(files / "face.jpg", images / "a.jpg")
    shutil.copy(files / "face.jpg", images / "b.jpg")
    out = tmp_path / "annotated"
    (out / "a.jpg").mkdir(parents=True)  # a folder where a.jpg's annotation would go: that write fails
    assert predict.main([str(images), "--model-dir", str(models / "fer"), "--annotate", str(out), "--json"]) == 1
    captured = capsys.readouterr()
    assert_clean(captured.err, "could not write")
    assert len(captured.out.strip().splitlines()) == 2, "both images are still predicted"
    assert (out / "b.jpg").is_file()


# ---- 2. broken model folders: one line naming the file and the fix --------------------------------

def _corrupt(path, how):
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[: len(data) // 2])


SER_BROKEN = [
    ("model.keras", "garbage", "model.keras: damaged or not a Keras model"),
    ("model.keras", "empty", "model.keras: empty (0 bytes)"),
    ("model.keras", "half", "model.keras: damaged or not a Keras model (not a .keras zip archive: cut short"),
    ("config.json", "half", "config.json: damaged (not valid JSON"),
    ("normalization.npz", "half", "normalization.npz: missing or damaged"),
]


@pytest.mark.parametrize("name,how,message", SER_BROKEN, ids=[f"{n}-{h}" for n, h, _ in SER_BROKEN])
def test_ser_predict_broken_model_folder(broken, files, name, how, message, capsys):
    from ser import predict

    _corrupt(broken / "ser" / name, how)
    assert predict.main([str(files / "speech.wav"), "--model-dir", str(broken / "ser")]) == 2
    err = capsys.readouterr().err
    assert_clean(err, message, "copy the run folder again or retrain")
    assert len(err.strip().splitlines()) == 1 and "File not found" not in err


@pytest.mark.parametrize("name,how,message", [
    ("model.keras", "garbage", "model.keras: damaged or not a Keras model"),
    ("config.json", "half", "config.json: damaged (not valid JSON"),
])
def test_fer_predict_broken_model_folder(broken, files, name, how, message, capsys):
    from fer import predict

    _corrupt(broken / "fer" / name, how)
    assert predict.main([str(files / "face.jpg"), "--model-dir", str(broken / "fer")]) == 2
    assert_clean(capsys.readouterr().err, message)


def test_model_folder_of_the_wrong_kind(broken, files, capsys):
    from core.io import read_json, write_json
    from fer import predict as fer_predict
    from ser import predict as ser_predict

    # as fer.train writes it (saved_models/fer): its TrainConfig with dataset and model
    write_json(broken / "fer" / "config.json", read_json(broken / "fer" / "config.json") | {"dataset": "fer2013",
                                                                                           "model": "cnn"})
    assert ser_predict.main([str(files / "speech.wav"), "--model-dir", str(broken / "fer")]) == 2
    assert_clean(capsys.readouterr().err, "holds a face (fer) model, not a speech (ser) model",
                 "python -m ser.train")
    assert fer_predict.main([str(files / "face.jpg"), "--model-dir", str(broken / "ser")]) == 2
    assert_clean(capsys.readouterr().err, "holds a speech (ser) model, not a face (fer) model")


def test_ser_folder_without_its_keys_is_not_a_keyerror(broken, files, capsys):
    from ser import predict

    (broken / "ser" / "config.json").write_text('{"epochs": 3}')
    assert predict.main([str(files / "speech.wav"), "--model-dir", str(broken / "ser")]) == 2
    assert_clean(capsys.readouterr().err, "lacks 'class_names'")


# ---- 3. unreadable inputs: the same reader and the same answer in the CLI and the server -----------

def test_half_truncated_jpeg_is_refused_by_cli_and_server_alike(models, files, capsys):
    from core.images import ImageReadError, read_image
    from fer import predict

    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(files / "half.jpg")
    assert predict.main([str(files / "half.jpg"), "--model-dir", str(models / "fer"), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "truncated or corrupt" in captured.err
    with TestClient(create_app(settings=Settings(**SMALL), models=Models(ser=sm.FakeVoice(), fer=sm.FakeFace())),
                    raise_server_exceptions=False) as client:
        response = client.post("/api/predict/image", content=(files / "half.jpg").read_bytes(),
                               headers={"content-type": "image/jpeg"})
        assert response.status_code == 400 and "truncated or corrupt" in response.json()["detail"]


@pytest.mark.parametrize("tool", ["ser", "fer"])
def test_dev_null_is_not_a_regular_file(models, tool, capsys):
    import importlib

    predict = importlib.import_module(f"{tool}.predict")
    assert predict.main(["/dev/null", "--model-dir", str(models / tool)]) == 1
    assert_clean(capsys.readouterr().err, "/dev/null: not a regular file")


def test_garbage_audio_says_not_a_valid_audio_file(models, files, capsys):
    from ser import predict

    assert predict.main([str(files / "garbage.wav"), "--model-dir", str(models / "ser")]) == 1
    err = capsys.readouterr().err
    assert_clean(err, "not a valid audio/video file")
    assert "Errno" not in err


def test_50ms_clip_gets_no_confident_label(models, files, capsys):
    from ser import predict

    assert predict.main([str(files / "short.wav"), "--model-dir", str(models / "ser"), "--json"]) == 1
    captured = capsys.readouterr()
    line = strict_json(captured.out.strip())
    assert line["label"] is None and line["probabilities"] is None and line["no_speech"]
    assert "Traceback" not in captured.err


def test_too_few_speakers_suggests_random_split(tmp_path, capsys):
    from ser import train

    synth.make_ravdess(tmp_path / "data", actors=2)
    out = tmp_path / "run"
    assert train.main(["--model", "cnn", "--corpora", "ravdess", "--data-dir", str(tmp_path / "data"), "--epochs",
                       "1", "--augment", "0", "--max-seconds", "1.0", "--output", str(out), "--cache-dir", "",
                       "--n-jobs", "1"]) == 2
    assert_clean(capsys.readouterr().err, "--split random", "--val-speakers")
    assert not (out / "model.keras").exists()


# ---- 4. the server: valid JSON everywhere, one-line 422s, clean refusals ---------------------------

@pytest.fixture()
def client():
    app = create_app(settings=Settings(**SMALL), models=Models(ser=sm.FakeVoice(), fer=sm.FakeFace()))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
        assert c.get("/api/health").status_code == 200, "the server must stay healthy"


@pytest.mark.parametrize("query", ["segments=maybe", "segments=2"])
def test_invalid_query_is_a_one_line_422(client, files, query):
    response = client.post(f"/api/predict/audio?{query}", content=(files / "speech.wav").read_bytes(),
                           headers={"content-type": "audio/wav"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "segments" in detail


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


HTTP_CASES = [
    ("image", {"content": png_header(20000, 20000), "headers": {"content-type": "image/png"}}, 400,
     "image too large"),
    ("image", {"content": png_header(9000, 9000), "headers": {"content-type": "image/png"}}, 400,
     "pixels are accepted"),
    ("audio", {"content": b"this is not audio at all" * 40, "headers": {"content-type": "audio/wav"}}, 400,
     "not a valid audio/video file"),
    ("audio", {"content": b"", "headers": {"content-type": "audio/wav"}}, 400, "empty upload"),
    ("audio", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "content type"),
    ("image", {"content": b"\xff\xd8\xff\xe0" + b"\0" * 50, "headers": {"content-type": "image/jpeg"}}, 400,
     "not a readable image"),
    ("image", {"content": b"\0" * 500_000, "headers": {"content-type": "image/png"}}, 413, "limit"),
    ("video", {"content": b"\x00\x00\x00\x18ftypmp42" * 10, "headers": {"content-type": "video/mp4"}}, 400,
     "cannot decode (not a valid audio/video file"),
]


@pytest.mark.parametrize("endpoint,kwargs,status,reason", HTTP_CASES, ids=[f"{e}-{s}-{r}" for e, _, s, r in HTTP_CASES])
def test_bad_upload_is_a_clean_refusal(client, endpoint, kwargs, status, reason):
    response = client.post(f"/api/predict/{endpoint}", **kwargs)
    assert response.status_code == status, response.text
    body = strict_json(response.text)
    assert isinstance(body["detail"], str) and reason in body["detail"]
    assert "Errno" not in body["detail"]


@pytest.mark.parametrize("t", ["NaN", "Infinity", "-Infinity"])
def test_websocket_never_echoes_non_finite_numbers(client, t):
    with client.websocket_connect("/ws/stream") as ws:
        strict_json(ws.receive_text())  # hello
        ws.send_text(f'{{"type": "ping", "id": 7, "t": {t}}}')
        pong = strict_json(ws.receive_text())
        assert pong["type"] == "pong" and pong["id"] == 7 and pong["t"] is None


def test_websocket_binary_nan_timestamp_and_garbage(client):
    with client.websocket_connect("/ws/stream") as ws:
        strict_json(ws.receive_text())
        pcm = (sm.voice(0.3) * 32767).astype("<i2").tobytes()
        ws.send_bytes(BINARY_HEADER.pack(2, 5, math.nan) + pcm)
        for raw in ('{"type": "frame", "id": 3, "data": "@@not base64@@"}', "not json", '{"type": "x"}',
                    '{"type": "audio", "id": 4, "data": "' + base64.b64encode(b"\0").decode() + '"}'):
            ws.send_text(raw)
        ws.send_bytes(b"\x01")
        seen = []
        while len([m for m in seen if m["type"] == "error"]) < 5:
            msg = strict_json(ws.receive_text())
            seen.append(msg)
            if msg.get("id") == 5:
                assert msg["t"] is None
        assert all(isinstance(m.get("detail", ""), str) for m in seen)


# ---- 5. stalled clients hold no work slot --------------------------------------------------------

def test_stalled_uploads_do_not_lock_other_users_out(files):
    """Nine clients that send a few bytes and then idle: another user's upload is still served at once, the
    stalled ones end with 408, a tenth upload from a stalled address gets 429, and health stays up."""
    app = create_app(settings=Settings(**(SMALL | dict(upload_timeout_seconds=2.0, max_uploads_per_client=1))),
                     models=Models(ser=sm.FakeVoice(), fer=sm.FakeFace()))
    speech = (files / "speech.wav").read_bytes()

    async def stalled_body():
        yield speech[:100]
        await asyncio.sleep(30)
        yield speech[100:]

    def client_at(host: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 5000)),
                                 base_url="http://test", timeout=20)

    async def scenario():
        stalled_clients = [client_at(f"10.0.0.{i}") for i in range(9)]
        stalled = [asyncio.create_task(c.post("/api/predict/audio", content=stalled_body(),
                                              headers={"content-type": "audio/wav"})) for c in stalled_clients]
        await asyncio.sleep(0.3)
        async with client_at("10.0.1.1") as user:
            started = asyncio.get_running_loop().time()
            ok = await user.post("/api/predict/audio", content=speech, headers={"content-type": "audio/wav"})
            served_in = asyncio.get_running_loop().time() - started
            still_stalled = sum(not task.done() for task in stalled)  # served while they still idle
            health = await user.get("/api/health")
        again = await stalled_clients[0].post("/api/predict/audio", content=speech,
                                              headers={"content-type": "audio/wav"})
        answers = await asyncio.gather(*stalled)
        after = await stalled_clients[1].post("/api/predict/audio", content=speech,
                                              headers={"content-type": "audio/wav"})
        for c in stalled_clients:
            await c.aclose()
        return ok, served_in, still_stalled, health, again, answers, after

    ok, served_in, still_stalled, health, again, answers, after = asyncio.run(scenario())
    assert ok.status_code == 200 and ok.json()["label"], ok.text
    assert still_stalled == 9 and served_in < 1.7, "the other user waited on the stalled uploads"
    assert health.status_code == 200
    assert again.status_code == 429 and "in progress" in again.json()["detail"]
    assert [a.status_code for a in answers] == [408] * 9
    assert all("not received within" in a.json()["detail"] for a in answers)
    assert after.status_code == 200, "a timed-out client's slots are released"


# ---- 6. resume after a damaged checkpoint -------------------------------------------------------

def _tiny_fit(run, epochs, extra=()):
    import keras

    from core.training import make_callbacks

    keras.utils.set_random_seed(1)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = keras.utils.to_categorical(np.arange(32) % 2, 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    return model.fit(x, y, validation_data=(x, y), epochs=epochs, verbose=0,
                     callbacks=[*make_callbacks(run, patience=10), *extra])


class _Interrupt(Exception):
    pass


def _interrupted_run(run):
    import keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise _Interrupt

    run.mkdir()
    with pytest.raises(_Interrupt):
        _tiny_fit(run, 5, [Stop()])
    return run / "checkpoints"


@pytest.mark.parametrize("damage,resumed_from", [("latest", 2), ("both", 0)])
def test_truncated_checkpoint_falls_back_and_says_so(tmp_path, caplog, damage, resumed_from):
    from core.training import read_history

    checkpoints = _interrupted_run(tmp_path / "run")
    names = ["latest.weights.h5"] + (["latest.weights.h5.bkp"] if damage == "both" else [])
    for name in names:
        _corrupt(checkpoints / name, "half")
    with caplog.at_level(logging.WARNING, logger="core.training"):
        history = _tiny_fit(tmp_path / "run", 5)
    assert history.epoch == list(range(resumed_from, 5))
    text = caplog.text
    assert "latest.weights.h5 is unreadable" in text
    assert ("previous good checkpoint" in text) if damage == "latest" else ("starting this run clean" in text)
    assert len(read_history(tmp_path / "run")["loss"]) == 5
    assert not checkpoints.exists(), "a finished run removes its checkpoints"


def test_bulk_exit_codes_mean_what_the_docs_say(models, files, capsys):
    from ser import predict

    assert predict.main([str(files / "speech.wav"), "--model-dir", str(models / "ser")]) == 0
    assert predict.main([str(files / "speech.wav"), str(files / "garbage.wav"), "--model-dir",
                         str(models / "ser")]) == 1
    assert predict.main([str(files / "speech.wav"), "--model-dir", str(files / "nowhere")]) == 2
    capsys.readouterr()



# ---- refusals of the evaluation / export / ensemble tools (user audit) ------------------------------------------

REFUSALS = [  # SER / FER: the tiny run folders; AFILE: an existing file; MISSING: a path that does not exist
    ("ser.ensemble", ["SER", "SER", "--output", "AFILE"], "is an existing file"),
    ("fer.ensemble", ["FER", "FER", "--output", "AFILE"], "is an existing file"),
    ("fusion.late", ["--output", "AFILE", "--data-dir", "MISSING"], "is an existing file"),
    ("ser.export", ["--model-dir", "ENSEMBLE"], "cannot be exported as one TFLite file"),
    ("fer.tta", ["--model-dir", "SER", "--data-dir", "MISSING"], "holds a speech (ser) model"),
    ("ser.ensemble", ["SER", "SER", "--output", "OUT", "--data-dir", "MISSING"], "--data-dir MISSING does not exist"),
    ("ser.export", ["--model-dir", "SER", "--data-dir", "MISSING"], "--data-dir MISSING does not exist"),
    ("fer.export", ["--model-dir", "FER", "--data-dir", "MISSING"], "--data-dir MISSING does not exist"),
    ("ser.crossval", ["--fold", "-3", "--output", "OUT", "--data-dir", "MISSING"], "--fold must be -1"),
    ("fer.export", ["--model-dir", "MISSING", "--max-test", "-4"], "--max-test must be >= 0"),
    ("fer.tta", ["--model-dir", "FER", "--min-gain", "-5"], "--min-gain must be >= -1"),
    ("fusion.late", ["--min-gain", "-3", "--data-dir", "MISSING"], "--min-gain must be >= 0"),
    # SHIPPED_SER / SHIPPED_FER: saved_models/ser_compact and fer_tiny (full configs: their kind is known)
    ("ser.ensemble", ["SHIPPED_SER", "SHIPPED_FER", "--output", "OUT"], "holds a face (fer) model, not a speech"),
    ("fer.ensemble", ["SHIPPED_FER", "SHIPPED_SER", "--output", "OUT"], "holds a speech (ser) model, not a face"),
    # TRAINED: a training run's folder (history.csv): an ensemble or evaluation would replace its model or reports
    ("ser.ensemble", ["SER", "SER", "--output", "TRAINED"], "holds a training run; give another folder"),
    ("fer.ensemble", ["FER", "FER", "--output", "TRAINED"], "holds a training run; give another folder"),
    ("ser.evaluate", ["--model-dir", "SER", "--output", "TRAINED"], "holds a training run; give another folder"),
    ("fer.evaluate", ["--model-dir", "FER", "--output", "TRAINED"], "holds a training run; give another folder"),
]


@pytest.fixture(scope="module")
def mixed_ensemble(models, tmp_path_factory):
    """A ser.ensemble folder of members with different front ends: members/ and no model.keras."""
    out = tmp_path_factory.mktemp("mixed") / "ens"
    for name in ("0_whisper", "1_cnn"):
        shutil.copytree(models / "ser", out / "members" / name)
    config = json.loads((models / "ser" / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({
        "task": "ser", "class_names": config["class_names"], "model": "ensemble(whisper+cnn)", "features": None,
        "input_shape": None, "members_dirs": ["members/0_whisper", "members/1_cnn"]}))
    return out


@pytest.mark.parametrize("module,args,message", REFUSALS, ids=[f"{m} {' '.join(a)}" for m, a, _ in REFUSALS])
def test_tools_refuse_bad_arguments_in_one_line(module, args, message, models, files, mixed_ensemble, tmp_path,
                                                capsys, repo_root):
    import importlib

    names = {"SER": models / "ser", "FER": models / "fer", "AFILE": files / "afile", "ENSEMBLE": mixed_ensemble,
             "MISSING": tmp_path / "missing", "OUT": tmp_path / "out", "TRAINED": tmp_path / "trained",
             "SHIPPED_SER": repo_root / "saved_models" / "ser_compact", "SHIPPED_FER": repo_root / "saved_models" / "fer_tiny"}
    names["TRAINED"].mkdir()
    (names["TRAINED"] / "history.csv").write_text("epoch,loss\n0,1.9\n")
    message = message.replace("MISSING", str(names["MISSING"]))
    main = importlib.import_module(module).main
    try:
        code = main([str(names.get(a, a)) for a in args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert_clean(err, message)
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert (files / "afile").read_text() == "not a folder"
    assert not (tmp_path / "out").exists() and [f.name for f in names["TRAINED"].iterdir()] == ["history.csv"]


@pytest.fixture(scope="module")
def capped_fer_run(models, tmp_path_factory):
    """A face run trained with --max-per-class 3 on a synthetic fer2013.csv of 8 images per class."""
    from synth_faces import write_fer2013_csv

    root = tmp_path_factory.mktemp("capped")
    write_fer2013_csv(root / "data" / "fer2013" / "fer2013.csv", per_class=8)
    run = root / "run"
    shutil.copytree(models / "fer", run)
    config = json.loads((run / "config.json").read_text())
    config |= {"dataset": "fer2013", "model": "cnn", "image_size": 48, "max_per_class": 3, "seed": 0}
    (run / "config.json").write_text(json.dumps(config))
    return run, root / "data"


def _run_test_split(run: Path, data: Path) -> list[str]:
    from fer.train import load_split, run_config

    face_set, splits = load_split(run_config(json.loads((run / "config.json").read_text()), str(data)))
    return sorted(np.asarray(face_set.sources)[splits == "test"])


def test_fer_evaluate_test_split_is_the_runs_own(capped_fer_run, tmp_path, capsys):
    import pandas as pd

    from fer import evaluate

    run, data = capped_fer_run
    test = _run_test_split(run, data)
    assert 0 < len(test) < 8 * 7 // 3  # the cap made the split small
    assert evaluate.main(["--model-dir", str(run), "--dataset", "fer2013", "--data-dir", str(data), "--split", "test",
                          "--output", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == len(test)
    assert sorted(pd.read_csv(tmp_path / "eval" / "predictions.csv")["file"]) == test
    capsys.readouterr()


def test_fer_tools_refuse_a_data_folder_that_does_not_re_create_the_runs_split(capped_fer_run, tmp_path, capsys,
                                                                               caplog):
    """The split is drawn again from whatever --data-dir holds: a part of the corpus gave another 'test' split with
    the run's training images in it, which fer.evaluate scored, fer.tta wrote into the run's metrics.json and
    fer.export into export.json. Checked against the run's split.csv, before anything is written."""
    from synth_faces import write_fer2013_csv

    from fer import evaluate, export, tta
    from fer.train import held_out_split, write_split_csv

    run, data = capped_fer_run
    own = tmp_path / "run"
    shutil.copytree(run, own)
    config = json.loads((own / "config.json").read_text())
    write_split_csv(own / "split.csv", *held_out_split(config, data_dir=str(data)))
    part = tmp_path / "part"
    write_fer2013_csv(part / "fer2013" / "fer2013.csv", per_class=5)
    before = {f.name: f.read_bytes() for f in own.iterdir()}
    runs = [(evaluate.main, ["--dataset", "fer2013", "--split", "test", "--output", str(tmp_path / "eval")]),
            (tta.main, []), (export.main, ["--modes", "float16"])]
    for main, extra in runs:
        assert main(["--model-dir", str(own), "--data-dir", str(part), *extra]) == 2
        err = capsys.readouterr().err
        assert "do not re-create" in err and "split" in err and "pass the data folder it was trained on" in err
    assert {f.name: f.read_bytes() for f in own.iterdir()} == before  # nothing written, nothing replaced
    assert not (tmp_path / "eval").exists()
    assert evaluate.main(["--model-dir", str(own), "--dataset", "fer2013", "--data-dir", str(data), "--split",
                          "test", "--output", str(tmp_path / "eval")]) == 0  # its own data still passes
    assert evaluate.main(["--model-dir", str(own), "--dataset", "fer2013", "--data-dir", str(data), "--output",
                          str(tmp_path / "eval_all")]) == 0  # --split all on its own corpus: said to hold training
    assert "--split all: these are the fer2013 images the model was trained on" in caplog.text
    capsys.readouterr()


def test_fer_export_checks_accuracy_on_the_runs_own_test_split(capped_fer_run, capsys):
    from fer import export

    run, data = capped_fer_run
    assert export.main(["--model-dir", str(run), "--data-dir", str(data), "--modes", "float16"]) == 0
    report = json.loads((run / "export.json").read_text())
    n = len(_run_test_split(run, data))
    assert report["test_n"] == n and report["split"] == f"the run's test split of fer2013 (all {n} faces)"
    assert export.main(["--model-dir", str(run), "--data-dir", str(data), "--modes", "float16", "--max-test", "2"]) == 0
    assert json.loads((run / "export.json").read_text())["split"] == (
        f"the run's test split of fer2013 (2 of its {n} faces, drawn with seed "
        f"{json.loads((run / 'config.json').read_text())['seed']})")
    capsys.readouterr()


def test_stream_replies_stay_valid_json_even_with_non_finite_numbers():
    from webapp.stream import to_json

    text = to_json({"probabilities": {"happy": float("nan"), "sad": 0.5}, "t": float("inf"), "box": [1, 2.0]})
    assert strict_json(text) == {"probabilities": {"happy": None, "sad": 0.5}, "t": None, "box": [1, 2.0]}
