"""The ``rfest`` command, in process (``main(argv)``) and as ``python -m rfest``.

The model module written below is the receptivefield README network with 2 channels:
per axis r 5, 7, 8 (j2), 12, 16, 18 (j4), 26, 34, padding 0 (valid layers); on 48 px
``feature_grid`` has (48 - 4 ... ) -> 44, 42, 21, 19, 17, 8, 6, 4 units.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rfest._cli import EXIT_CODES, main  # noqa: E402

pytestmark = pytest.mark.torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

MODELS = textwrap.dedent(
    """
    from collections import OrderedDict
    from torch import nn

    def readme_net():
        c = 2
        return nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, c, 5), relu1=nn.ReLU(), conv2=nn.Conv2d(c, c, 3),
            relu2=nn.ReLU(), pool1=nn.MaxPool2d(2), conv3=nn.Conv2d(c, c, 3),
            relu3=nn.ReLU(), conv4=nn.Conv2d(c, c, 3), relu4=nn.ReLU(),
            pool2=nn.MaxPool2d(2), conv5=nn.Conv2d(c, c, 3), relu5=nn.ReLU(),
            feature_grid=nn.Conv2d(c, c, 3),
        ))

    class Small(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Conv2d(1, 1, 3), nn.AvgPool2d(2))

    small = Small()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))

    def broken():
        raise RuntimeError("weights file missing")
    """
)


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "rfest_cli_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_json_and_plot_for_two_outputs(
    models: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "grid.png"
    argv = ["rfest_cli_models:readme_net", "-i", "3,48,48", "-o", "pool1", "-o", "feature_grid"]
    assert main([*argv, "--json", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["pool1", "feature_grid"]
    # pool1: r8 j2; feature_grid: r34 j4; offsets (r - 1) / 2.
    assert (out["pool1"]["size"], out["pool1"]["stride"]) == ([8, 8], [2, 2])
    grid = out["feature_grid"]
    assert (grid["size"], grid["stride"], grid["padding"]) == ([34, 34], [4, 4], [0, 0])
    assert (grid["offset"], grid["output_shape"]) == ([16.5, 16.5], [4, 4])
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_text_output_of_a_class_built_with_no_arguments(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Conv k3 then average pool 2: r4 j2, 10 px -> 8 -> 4 units.
    assert main(["rfest_cli_models:Small", "--input-shape", "1x10x10"]) == 0
    text = capsys.readouterr().out
    assert "size    (4, 4)" in text and "stride  (2, 2)" in text and "output  (4, 4)" in text


def test_report_json_and_growth_plot(
    models: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "growth.png"
    argv = ["rfest_cli_models:small", "-i", "1,12,12", "--report", "--json", "--plot", str(png)]
    assert main(argv) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    # '0' conv k3: r3 j1; '1' pool 2: r4 j2.
    assert [(r["name"], r["size"], r["stride"]) for r in layers] == [
        ("0", [3, 3], [1, 1]),
        ("1", [4, 4], [2, 2]),
    ]
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_progress_goes_to_stderr(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rfest_cli_models:small", "-i", "1,12,12", "--report", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "[2/2] 1" in captured.err
    assert captured.out.splitlines()[0].split()[0] == "layer"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], 2, "name a model"),
        (["rfest_cli_models"], 2, "package.module:attr"),
        (["rfest_cli_models:small", "-i", "1,ten,10"], 2, "'ten' is not a positive integer"),
        (["rfest_cli_models:small", "-i", "1,10,10", "-o", "nope"], 2, "no module named 'nope'"),
        (["rfest_cli_models:mlp"], 2, "input_shape"),
        (["no_such_module_rfest:x"], 3, "cannot import 'no_such_module_rfest'"),
        (["rfest_cli_models:nothing"], 3, "has no attribute 'nothing'"),
        (["rfest_cli_models:broken"], 3, "weights file missing"),
        (["rfest_cli_models:small", "-i", "1,10,10", "-b", "nosuch"], 4, "no rfest backend"),
        (["rfest_cli_models:small", "-i", "1,2,2"], 5, "the model raised"),
        (["missing.keras"], 3, "no such file"),
        (["--no-such-option"], 2, "unrecognized arguments"),
    ],
)
def test_errors_say_what_to_fix(
    models: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    assert main(argv) == code
    assert message in capsys.readouterr().err
    assert code in EXIT_CODES


def test_python_dash_m_end_to_end(models: Path, tmp_path: Path) -> None:
    png = tmp_path / "small.png"
    plot = ["--json", "--plot", str(png)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(models), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-m", "rfest", "rfest_cli_models:small", "-i", "1,10,10", *plot],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"]["size"] == [4, 4]
    assert png.read_bytes().startswith(PNG_SIGNATURE)


# Keras on TensorFlow converts variables with np.array(x) when saving: not rfest's to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_saved_keras_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keras = pytest.importorskip("keras")
    # conv k5 then conv k3 stride 2: r 5 + 2 = 7, j2; 'valid': padding 0.
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(2, 5, name="c1")(inputs)
    x = keras.layers.Conv2D(2, 3, strides=2, name="c2")(x)
    path = tmp_path / "net.keras"
    keras.Model(inputs, x).save(path)
    assert main([str(path), "-o", "c2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["c2"]["size"], out["c2"]["stride"], out["c2"]["padding"]) == (
        [7, 7],
        [2, 2],
        [0, 0],
    )
