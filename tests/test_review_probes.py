"""Regressions from the independent adversarial review (each printed a traceback or broke a promise)."""

from __future__ import annotations

import json
import os
import pickle
import stat

import numpy as np
import pytest
from conftest import camera_photos
from typer.testing import CliRunner

from ilgnet_cli.ava.records import AVAFormatError, parse_label_lines, parse_line, read_ava
from ilgnet_cli.cli import app
from ilgnet_cli.model import store
from ilgnet_cli.training.train import _check_resume_config, _step_of

runner = CliRunner()


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    return result.output


def test_report_with_an_unknown_extension_is_refused_before_scoring(tmp_path, weights_file):
    photo = str(camera_photos(1)[0])
    result = runner.invoke(app, ["score", photo, "--weights", str(weights_file), "-o", str(tmp_path / "r.weird")])
    assert "--format" in one_line_error(result, 2) and not (tmp_path / "r.weird").exists()


def test_huge_and_negative_numbers_in_ava_lists_are_format_errors(tmp_path):
    with pytest.raises(AVAFormatError, match="non-numeric"):
        parse_line("1 " + "9" * 5000 + " 1 1 1 1 1 1 1 1 1 1 0 0 1", 1)
    with pytest.raises(AVAFormatError, match="negative image id"):
        parse_line("1 -5 1 1 1 1 1 1 1 1 1 1 0 0 1", 1)
    with pytest.raises(AVAFormatError):
        parse_label_lines("9" * 5000 + ".jpg 1\n", "test.txt")
    with pytest.raises(AVAFormatError):
        parse_label_lines("\u0665.jpg 1\n", "test.txt")  # an Arabic-Indic digit is no image id
    ava = tmp_path / "AVA.txt"
    ava.write_text("1 7 1 1 1 1 1 1 1 1 1 1 0 0 1\n1 " + "9" * 5000 + " 1 1 1 1 1 1 1 1 1 1 0 0 1\n")
    data = read_ava(ava)
    assert list(data.records) == [7] and len(data.skipped) == 1


def test_tampered_run_folders_are_one_line_errors(tmp_path):
    from ilgnet_cli.errors import DataError

    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="config.json"):
        _check_resume_config(tmp_path, {})
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="config.json"):
        _check_resume_config(tmp_path, {})
    assert _step_of("garbage") == float("inf") and _step_of("[1]") == float("inf") and _step_of('{"step": 3}') == 3


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/ilgnet-pwned",))


def test_a_pickle_bomb_checkpoint_is_refused_not_run(tmp_path, weights_file):
    from ilgnet_cli.errors import DataError
    from ilgnet_cli.model.ilgnet import ILGNet
    from ilgnet_cli.training.train import RECIPES, _resume, make_optimizer

    ckpt = tmp_path / "checkpoints" / "last"
    ckpt.mkdir(parents=True)
    store.save_weights(ckpt / "model.safetensors", store.read_weights(weights_file)[0], "ava1")
    with (ckpt / "state.pt").open("wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    model = ILGNet()
    with pytest.raises(DataError, match="damaged or not ilgnet's"):
        _resume(tmp_path, model, make_optimizer(model, RECIPES["fast"]), cuda=False)
    assert not os.path.exists("/tmp/ilgnet-pwned")


def _with_mean_tensor(tmp_path, weights_file, tensor):
    from safetensors.numpy import save_file

    state, meta = store.read_weights(weights_file)
    arrays = {k: v.numpy() for k, v in state.items()}
    if tensor is not None:
        arrays["_mean.image"] = tensor
    path = tmp_path / "odd.safetensors"
    save_file(arrays, str(path), metadata={**meta, "mean": "image"})
    return path


@pytest.mark.slow
@pytest.mark.parametrize("tensor", [None, np.ones((3, 256, 256), bool), np.ones((2, 2), np.float32)])
def test_weights_promising_a_mean_image_they_lack_are_one_line(tmp_path, weights_file, tensor):
    path = _with_mean_tensor(tmp_path, weights_file, tensor)
    out = one_line_error(runner.invoke(app, ["weights", "add", str(path), "--name", "odd"]))
    assert "mean" in out and store.installed("odd") is None


@pytest.mark.slow
def test_mean_files_are_checked_before_their_data_is_read(tmp_path, weights_file):
    strings = tmp_path / "str.npy"
    np.save(strings, np.array(["1", "abc", "3"]))
    huge = tmp_path / "huge.npy"
    with huge.open("wb") as fh:  # a header declaring 3x100000x100000 float64 and no data
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (3, 100000, 100000)})
    cplx = tmp_path / "complex.npy"
    np.save(cplx, np.full(3, 100 + 1j))
    for mean in (strings, huge, cplx):
        out = one_line_error(runner.invoke(app, ["weights", "add", str(weights_file), "--name", "m",
                                                 "--mean", str(mean)]))
        assert mean.name in out


@pytest.mark.slow
def test_weights_files_follow_the_umask(tmp_path, weights_file):
    old = os.umask(0o022)
    try:
        rec = store.add_safetensors(weights_file, "modes")
        run_best = store.save_weights(tmp_path / "best.safetensors", store.read_weights(weights_file)[0], "ava1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(rec.path.stat().st_mode) == 0o644
    assert stat.S_IMODE(run_best.stat().st_mode) == 0o644
    os.chmod(run_best, 0o640)  # a replaced file keeps its mode
    store.save_weights(run_best, store.read_weights(weights_file)[0], "ava1")
    assert stat.S_IMODE(run_best.stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    json.dumps(rec.to_json())
