"""Prediction on two real images: H direction and coordinates, checkpoints, the CLI commands."""

import cv2
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from homogen.sampling import patch_homography
from homogen.model.cli import register
from homogen.model.network import HomographyNet
from homogen.model.predict import overlay, predict_homography, resize_matrix
from homogen.model.loading import load_model
from homogen.model.train import CheckpointError

from helpers import PHOTOS

PHOTO = PHOTOS[5]
P = 128
OFF = np.array([-20, 12, 25, -7, 14, 22, -9, -26], np.float32)


def oracle_net(offsets) -> HomographyNet:
    """Tiny HomographyNet that always outputs ``offsets`` (stands in for a perfectly trained one)."""
    torch.manual_seed(0)
    net = HomographyNet(width=0.125).eval()
    with torch.no_grad():
        net.head[-1].weight.zero_()
        net.head[-1].bias.copy_(torch.as_tensor(offsets, dtype=torch.float32))
    return net


@pytest.fixture(scope="module")
def pair():
    """Patches A, B of a real photograph by the recipe (CONVENTIONS.md), corners moved by OFF."""
    img = cv2.resize(cv2.imread(str(PHOTO), cv2.IMREAD_GRAYSCALE), (320, 240), interpolation=cv2.INTER_AREA)
    x, y = 80, 50
    c = np.float32([[x, y], [x + P, y], [x + P, y + P], [x, y + P]])
    h_ab = cv2.getPerspectiveTransform(c, c + OFF.reshape(4, 2))
    warped = cv2.warpPerspective(img, np.linalg.inv(h_ab), (320, 240))
    return img[y : y + P, x : x + P].copy(), warped[y : y + P, x : x + P].copy()


def photometric_error(a, b, h):
    """Mean |A - B warped by h into A's frame| over the interior of A."""
    w = cv2.warpPerspective(b, h, (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR)
    hh, ww = a.shape
    inner = (slice(int(0.35 * hh), int(0.65 * hh)), slice(int(0.35 * ww), int(0.65 * ww)))
    return float(np.abs(w[inner].astype(float) - a[inner].astype(float)).mean())


def test_patch_sized_inputs_give_the_patch_homography(pair):
    a, b = pair
    pred = predict_homography(oracle_net(OFF), a, b)
    np.testing.assert_allclose(pred.offsets, OFF, atol=1e-4)
    hp = patch_homography(OFF, P)
    np.testing.assert_allclose(pred.homography, hp / hp[2, 2], atol=1e-6)
    assert photometric_error(a, b, pred.homography) < 0.4 * photometric_error(a, b, np.linalg.inv(pred.homography))


def test_homography_is_in_input_pixel_coordinates_and_maps_b_to_a(pair):
    a, b = pair
    big_a = cv2.resize(a, (200, 160), interpolation=cv2.INTER_CUBIC)  # different sizes and aspect ratios
    big_b = cv2.resize(b, (256, 224), interpolation=cv2.INTER_CUBIC)
    pred = predict_homography(oracle_net(OFF), big_a, big_b)
    s_a, s_b = resize_matrix((200, 160), (P, P)), resize_matrix((256, 224), (P, P))
    expect = np.linalg.inv(s_a) @ patch_homography(OFF, P) @ s_b
    np.testing.assert_allclose(pred.homography, expect / expect[2, 2], rtol=1e-5, atol=1e-6)
    # Photometric: B warped by H lands on A; the other direction does not.
    good = photometric_error(big_a, big_b, pred.homography)
    bad = photometric_error(big_a, big_b, np.linalg.inv(pred.homography))
    assert good < 0.4 * bad
    # resize_matrix is cv2.resize's pixel map: a bright dot moves where it says.
    dot = np.zeros((50, 40), np.uint8)
    dot[20:23, 10:13] = 255
    r = cv2.resize(dot, (80, 150), interpolation=cv2.INTER_LINEAR).astype(float)
    ys, xs = np.mgrid[: r.shape[0], : r.shape[1]]
    centre = np.array([(xs * r).sum() / r.sum(), (ys * r).sum() / r.sum(), 1.0])
    np.testing.assert_allclose(resize_matrix((40, 50), (80, 150)) @ [11, 21, 1], centre, atol=0.1)


def test_overlay_is_in_a_frame(pair):
    a, b = pair
    h = patch_homography(OFF, P)
    out = overlay(a, b, h)
    assert out.shape == (P, P, 3) and out.dtype == np.uint8
    # Where both exist, green is A and red/blue are warped B; near the centre they agree.
    c = out[54:74, 54:74].astype(float)
    assert np.abs(c[..., 1] - c[..., 2]).mean() < 15


def test_load_model_reads_a_trainer_checkpoint_and_refuses_anything_else_naming_it(tmp_path):
    from homogen.model.train import save_checkpoint

    net = oracle_net(OFF)
    x = torch.randint(0, 255, (2, 2, P, P), dtype=torch.uint8)
    ckpt = save_checkpoint(
        tmp_path / "best.pt", {"format": 1, "model": net.state_dict(), "width": 0.125, "patch_size": P}
    )
    loaded = load_model(str(ckpt))
    assert isinstance(loaded, HomographyNet) and not loaded.training and loaded.patch_size == P
    torch.testing.assert_close(loaded(x), net(x))
    bare = tmp_path / "bare.pt"
    torch.save(net.state_dict(), bare)  # weights without the trainer's record: not a homogen checkpoint
    with pytest.raises(CheckpointError, match="not a homogen checkpoint"):
        load_model(str(bare))
    evil = tmp_path / "evil.pt"
    torch.save({"model": object()}, evil)  # needs full unpickling: refused, never run
    with pytest.raises(CheckpointError, match="would run code"):
        load_model(str(evil))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(junk)):
        load_model(str(junk))
    with pytest.raises(ValueError, match="not an MLflow URI"):
        load_model(str(tmp_path / "missing.pt"))
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ValueError, match="not a HomographyNet MLflow model"):
        load_model(str(folder))


@pytest.fixture()
def cli():
    app = typer.Typer()
    register(app)
    return app


def test_cli_predict_prints_h_and_writes_overlay(cli, pair, tmp_path):
    from homogen.model.train import save_checkpoint

    a, b = pair
    big_b = cv2.resize(b, (256, 256), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), big_b)
    ckpt = save_checkpoint(
        tmp_path / "m.pt", {"format": 1, "model": oracle_net(OFF).state_dict(), "width": 0.125, "patch_size": P}
    )
    res = CliRunner().invoke(
        cli,
        [
            "predict",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "--model",
            str(ckpt),
            "--overlay",
            str(tmp_path / "o.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("H (maps B pixels to A pixels"))
    h = np.array([[float(v) for v in lines[i + r].split()] for r in (1, 2, 3)])
    expect = patch_homography(OFF, P) @ resize_matrix((256, 256), (P, P))
    np.testing.assert_allclose(h, expect / expect[2, 2], rtol=1e-4, atol=1e-5)
    o = cv2.imread(str(tmp_path / "o.png"))
    assert o is not None and o.shape == (P, P, 3)

    missing = CliRunner().invoke(
        cli, ["predict", str(tmp_path / "nope.png"), str(tmp_path / "b.png"), "--model", str(ckpt)]
    )
    assert missing.exit_code == 2 and "no image file" in missing.output


def test_cli_evaluate_table(cli, tmp_path):
    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate
    from homogen.model.train import save_checkpoint

    out = tmp_path / "ds.zarr"
    generate(
        GenerateConfig(output=str(out), sampling=SamplingConfig(pairs_per_image=4), source=SourceConfig(max_images=8))
    )
    ckpt = save_checkpoint(
        tmp_path / "m.pt", {"format": 1, "model": oracle_net(np.zeros(8)).state_dict(), "width": 0.125, "patch_size": P}
    )
    res = CliRunner().invoke(
        cli, ["evaluate", str(out), "--model", str(ckpt), "--methods", "identity,sift", "--limit", "6"]
    )
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method |") and len(rows) == 4
    net_row, id_row = rows[1].split("|"), rows[2].split("|")
    assert "HomographyNet" in net_row[1] and "identity" in id_row[1]
    assert net_row[2] == id_row[2]  # the zero-offset net scores exactly the identity's MACE
    assert "6 pairs" in res.output
    bad = CliRunner().invoke(cli, ["evaluate", str(out), "--methods", "magic"])
    assert bad.exit_code == 2 and "unknown method" in bad.output


@pytest.mark.parametrize("damage, reason", [("truncated", "truncated JPEG"), ("corrupt", "corrupt JPEG data")])
def test_cli_predict_refuses_a_damaged_jpeg_in_one_line_naming_the_file_and_the_reason(cli, tmp_path, damage, reason):
    from homogen.model.train import save_checkpoint

    data = PHOTO.read_bytes()
    mid = len(data) // 2
    bad = data[:mid] if damage == "truncated" else data[:mid] + bytes(range(256)) * 8 + data[mid + 2048 :]
    (tmp_path / "damaged.jpg").write_bytes(bad)
    (tmp_path / "good.jpg").write_bytes(data)
    ckpt = save_checkpoint(
        tmp_path / "m.pt", {"format": 1, "model": oracle_net(OFF).state_dict(), "width": 0.125, "patch_size": P}
    )
    for args in (["damaged.jpg", "good.jpg"], ["good.jpg", "damaged.jpg"]):
        res = CliRunner().invoke(cli, ["predict", *(str(tmp_path / a) for a in args), "--model", str(ckpt)])
        assert res.exit_code == 2, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and str(tmp_path / "damaged.jpg") in lines[0] and reason in lines[0], res.output
        assert "H (maps" not in res.output
    ok = CliRunner().invoke(
        cli, ["predict", str(tmp_path / "good.jpg"), str(tmp_path / "good.jpg"), "--model", str(ckpt)]
    )
    assert ok.exit_code == 0 and "A 640x" in ok.output, ok.output  # the undamaged photograph, at its own size


def test_cli_evaluate_network_refine_without_a_model_says_it_needs_model(cli, tmp_path):
    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate

    out = tmp_path / "ds.zarr"
    generate(
        GenerateConfig(output=str(out), sampling=SamplingConfig(pairs_per_image=2), source=SourceConfig(max_images=4))
    )
    res = CliRunner().invoke(cli, ["evaluate", str(out), "--methods", "sift,network+refine"])
    assert res.exit_code == 2
    assert "network+refine" in res.output and "--model" in res.output and "unknown method" not in res.output
    typo = CliRunner().invoke(cli, ["evaluate", str(out), "--methods", "sfit"])
    assert typo.exit_code == 2 and "network+refine (with --model)" in typo.output  # the list names it


@pytest.fixture(scope="module")
def level_stores(tmp_path_factory):
    """Small stores of real photographs: ``none``, and ``hard`` generated with the same settings, and
    ``hard`` from more images, and ``hard`` with another seed (P=32, rho=8, 2 pairs an image)."""
    from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
    from homogen.generate import generate

    root = tmp_path_factory.mktemp("levels")
    out = {}
    for name, photometric, images, seed in (
        ("none", "none", 8, 0),
        ("hard", "hard", 8, 0),
        ("more-images", "hard", 16, 0),
        ("other-seed", "hard", 8, 1),
    ):
        out[name] = root / f"{name}.zarr"
        generate(
            GenerateConfig(
                output=str(out[name]),
                sampling=SamplingConfig(pairs_per_image=2, patch_size=32, rho=8, photometric=photometric, seed=seed),
                source=SourceConfig(max_images=images, test_fraction=0.5),
            )
        )
    return out


def test_cli_evaluate_compares_noise_levels_only_on_the_same_pairs(cli, level_stores):
    import re

    for other, why in (("more-images", r"\(\d+ vs \d+ test pairs\)"), ("other-seed", r"\(sampling seed 0 vs 1\)")):
        res = CliRunner().invoke(
            cli, ["evaluate", str(level_stores["none"]), str(level_stores[other]), "--methods", "identity"]
        )
        assert res.exit_code == 2, res.output
        out = res.output
        assert len(out.strip().splitlines()) == 1, out
        assert "do not hold the same test pairs" in out and re.search(why, out) and "--photometric" in out, out
        assert str(level_stores[other]) in out
        assert "| method |" not in out  # refused before anything was evaluated
    same = CliRunner().invoke(
        cli, ["evaluate", str(level_stores["none"]), str(level_stores["hard"]), "--methods", "identity"]
    )
    assert same.exit_code == 0, same.output
    rows = [
        line for line in same.output.split("by noise level:")[1].splitlines() if line.startswith(("| none", "| hard"))
    ]
    assert len(rows) == 2 and rows[0].split("|")[3] == rows[1].split("|")[3]  # identity's MACE: the same offsets


def test_cli_predict_refuses_a_model_that_predicts_nan_instead_of_printing_a_nan_homography(cli, pair, tmp_path):
    from homogen.model.train import save_checkpoint

    a, b = pair
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "b.png"), b)
    nan = np.full(8, np.nan, np.float32)
    ckpt = save_checkpoint(
        tmp_path / "nan.pt", {"format": 1, "model": oracle_net(nan).state_dict(), "width": 0.125, "patch_size": P}
    )
    res = CliRunner().invoke(cli, ["predict", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(ckpt)])
    assert res.exit_code == 1 and "non-finite offsets" in res.output and "H (maps" not in res.output
