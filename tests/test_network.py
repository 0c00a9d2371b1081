"""HomographyNet architecture, normalisation, and the offsets -> H conversion on real pairs."""

from __future__ import annotations

import pytest
import torch
from kornia.geometry.transform import warp_perspective

from homogen.config import GenerateConfig, SamplingConfig, SourceConfig
from homogen.generate import generate
from homogen.stores import open_dataset
from homogen.model.network import HomographyNet, offsets_to_homography, patch_corners


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def real_pairs(tmp_path_factory):
    """16 pairs (P=128, rho=32) cut from 4 bundled COCO photographs."""
    out = tmp_path_factory.mktemp("network") / "ds.zarr"
    generate(
        GenerateConfig(output=str(out), sampling=SamplingConfig(pairs_per_image=4), source=SourceConfig(max_images=4))
    )
    return open_dataset(str(out)).read(0, 16)


def expected_parameters(width: float = 1.0, patch: int = 128) -> int:
    """Count by hand: 3x3 convs without bias, BatchNorm (weight + bias), two linear layers."""
    chans = [2] + [max(1, round(c * width)) for c in (64, 64, 64, 64, 128, 128, 128, 128)]
    convs = sum(9 * c_in * c_out for c_in, c_out in zip(chans[:-1], chans[1:]))
    norms = sum(2 * c for c in chans[1:])
    hidden = max(1, round(1024 * width))
    flat = chans[-1] * (patch // 8) ** 2
    return convs + norms + (flat * hidden + hidden) + (hidden * 8 + 8)


@pytest.mark.parametrize("width", [1.0, 0.125])
def test_parameter_count_matches_the_architecture(width):
    net = HomographyNet(width=width)
    assert sum(p.numel() for p in net.parameters()) == expected_parameters(width)


def test_full_width_layers_follow_the_paper():
    net = HomographyNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 64, 64, 128, 128, 128, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 8 and all(n.eps == 5e-3 for n in norms)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 3
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(128 * 16 * 16, 1024), (1024, 8)]
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]


def test_output_shape_and_uint8_equals_float_input():
    net = HomographyNet(width=0.125).eval()
    x = torch.randint(0, 256, (3, 2, 128, 128), dtype=torch.uint8)
    out = net(x)
    assert out.shape == (3, 8) and out.dtype == torch.float32
    torch.testing.assert_close(net(x.float()), out)


def test_normalisation_maps_0_255_to_unit_interval():
    x = torch.tensor([0, 255, 127.5]).view(1, 1, 1, 3)
    assert HomographyNet.normalize(x).flatten().tolist() == [-1.0, 1.0, 0.0]


def test_channels_last_input_gives_the_same_output():
    net = HomographyNet(width=0.125).eval()
    x = torch.randint(0, 256, (2, 2, 128, 128), dtype=torch.uint8)
    ref = net(x)
    net_cl = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net_cl(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 2, 128, 128\)"):
        HomographyNet(width=0.125)(torch.zeros(1, 2, 64, 64))
    with pytest.raises(ValueError, match="divisible by 8"):
        HomographyNet(patch_size=100)


def test_offsets_to_homography_moves_each_corner_by_its_offset():
    offsets = torch.tensor([[3.0, -2.0, 5.0, 1.0, -4.0, 6.0, 2.0, -7.0]], dtype=torch.float64)
    h = offsets_to_homography(offsets, 128)
    assert h.shape == (1, 3, 3) and h[0, 2, 2] == 1.0
    src = torch.cat([patch_corners(128, dtype=torch.float64)[0], torch.ones(4, 1, dtype=torch.float64)], 1)
    dst = src @ h[0].T
    torch.testing.assert_close(dst[:, :2] / dst[:, 2:], src[:, :2] + offsets.view(4, 2))


def test_offsets_to_homography_equals_the_stored_homography(real_pairs):
    h = offsets_to_homography(torch.from_numpy(real_pairs["offsets"]), 128)
    torch.testing.assert_close(h.double(), torch.from_numpy(real_pairs["homography"]), rtol=1e-4, atol=1e-4)


def test_direction_photometric_check_on_real_pairs(real_pairs):
    """B(q) = A(H q): warping A with H^-1 reproduces B; warping with H (wrong direction) does not."""
    pairs = torch.from_numpy(real_pairs["pairs"]).float()
    a, b = pairs[:, :1], pairs[:, 1:]
    h = offsets_to_homography(torch.from_numpy(real_pairs["offsets"]), 128)

    def interior_error(m):
        warped = warp_perspective(a, m, (128, 128))
        inside = warp_perspective(torch.ones_like(a), m, (128, 128)) > 0.999
        inside[..., :8, :] = inside[..., -8:, :] = inside[..., :, :8] = inside[..., :, -8:] = False
        return ((warped - b).abs() * inside).sum() / inside.sum()

    right, wrong = interior_error(torch.linalg.inv(h)), interior_error(h)
    assert right < 2.0, right  # grey levels: interpolation only
    assert wrong > 10 * right, (right, wrong)


def test_one_optimisation_step_lowers_the_loss_on_real_pairs(real_pairs):
    torch.manual_seed(0)
    net = HomographyNet(width=0.125, dropout=0.0).train()
    x = torch.from_numpy(real_pairs["pairs"])
    y = torch.from_numpy(real_pairs["offsets"])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = torch.nn.functional.smooth_l1_loss(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = torch.nn.functional.smooth_l1_loss(net(x), y)
    assert after < loss.detach()
