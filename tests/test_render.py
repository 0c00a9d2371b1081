"""sample_grid: the picture has the promised size, and its lines sit where the geometry says."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.render import GREEN, RED, grid_layout, sample_grid, save_png
from homogen.stores import open_dataset

P = 128


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("render") / "ds.zarr")
    generate(
        GenerateConfig(output=out, source=SourceConfig(max_images=6), sampling=SamplingConfig(pairs_per_image=4)),
        progress=False,
    )
    return open_dataset(out)


def pixel(img: np.ndarray, origin: tuple[int, int], xy) -> tuple[int, ...]:
    """Colour (B, G, R) at patch-local point ``xy`` (rounded) of the patch whose (0, 0) is ``origin``."""
    x, y = (int(round(v)) for v in np.asarray(origin) + np.asarray(xy, np.float64))
    return tuple(int(c) for c in img[y, x])


def near(img: np.ndarray, origin: tuple[int, int], xy, colour) -> bool:
    """Whether a pixel within 1 px of patch-local ``xy`` has ``colour`` (lines are rasterised)."""
    x, y = (int(round(v)) for v in np.asarray(origin) + np.asarray(xy, np.float64))
    return bool((img[y - 1 : y + 2, x - 1 : x + 2] == np.array(colour, np.uint8)).all(-1).any())


def square() -> np.ndarray:
    return np.array([[0, 0], [P, 0], [P, P], [0, P]], np.float64)


def test_grid_size_follows_the_layout(ds):
    img = sample_grid(ds, n=8, cols=4)
    margin = ds.rho + 4
    cell = P + 2 * margin
    assert img.dtype == np.uint8 and img.shape == grid_layout(ds, 8, 4).shape
    # 2 rows x 4 pairs; each pair: a label band over two cells, separated and framed by fixed gaps
    assert img.shape[1] == 12 + 4 * (2 * cell + 6 + 12)
    assert img.shape[0] == 12 + 2 * (16 + cell + 12)


def test_true_quad_is_drawn_at_corners_plus_offsets_on_a_and_at_the_border_of_b(ds):
    indices = [0, 5, 17]
    img = sample_grid(ds, indices=indices, cols=2)
    layout = grid_layout(ds, len(indices), 2)
    for k, i in enumerate(indices):
        row = ds[i]
        a_org, b_org = layout.a_origin(k), layout.b_origin(k)
        quad = square() + row["offsets"].reshape(4, 2)
        for corner in quad:
            assert pixel(img, a_org, corner) == GREEN
        for a, b in zip(quad, np.roll(quad, -1, axis=0)):  # edge midpoints
            assert near(img, a_org, (a + b) / 2, GREEN)
        for point in square() + [[0, 0], [0, 0], [-1, 0], [0, -1]]:  # B's border (corners P, P are one px past)
            assert pixel(img, b_org, point) == GREEN
        assert pixel(img, b_org, (P / 2, 0)) == GREEN
        # the photographs are shown as they are, not flipped or shifted: the centres are untouched
        a, b = row["pairs"]
        assert pixel(img, a_org, (64, 64)) == (a[64, 64],) * 3
        assert pixel(img, b_org, (64, 64)) == (b[64, 64],) * 3
        assert pixel(img, b_org, (10, 20)) == (b[20, 10],) * 3


def test_exact_prediction_puts_red_on_the_true_corners_in_both_patches(ds):
    i = 3
    row = ds[i]
    img = sample_grid(ds, indices=[i], predicted_offsets=row["offsets"][None])
    layout = grid_layout(ds, 1)
    for corner in square() + row["offsets"].reshape(4, 2):
        assert pixel(img, layout.a_origin(0), corner) == RED
    # in B the predicted corners are mapped back by H^-1: a perfect prediction lands on B's corners
    for corner in square():
        assert pixel(img, layout.b_origin(0), corner) == RED


def test_wrong_prediction_is_drawn_where_it_points(ds):
    i = 3
    row = ds[i]
    pred = row["offsets"].copy()
    pred[0] += 10.0  # TL moved 10 px right in A
    img = sample_grid(ds, indices=[i], predicted_offsets=pred[None])
    layout = grid_layout(ds, 1)
    tl_pred = np.array([pred[0], pred[1]], np.float64)
    assert pixel(img, layout.a_origin(0), tl_pred) == RED
    assert pixel(img, layout.a_origin(0), row["offsets"][:2]) == GREEN  # the truth is still there
    h_inv = np.linalg.inv(row["homography"])
    in_b = cv2.perspectiveTransform(tl_pred[None, None], h_inv)[0, 0]
    assert np.linalg.norm(in_b) > 5  # visibly off B's corner...
    assert pixel(img, layout.b_origin(0), in_b) == RED  # ...exactly where H^-1 sends it


def test_bad_arguments_say_what_to_pass(ds):
    with pytest.raises(ValueError, match=r"expected \(2, 8\)"):
        sample_grid(ds, indices=[0, 1], predicted_offsets=np.zeros((3, 8)))
    with pytest.raises(IndexError, match="out of range"):
        sample_grid(ds, indices=[len(ds)])


def test_save_png_round_trips(ds, tmp_path):
    img = sample_grid(ds, n=2)
    path = save_png(img, str(tmp_path / "figs" / "grid.png"))
    assert np.array_equal(cv2.imread(path, cv2.IMREAD_COLOR), img)
