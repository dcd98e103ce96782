"""jaxseg.data.corruptions against independent references (numpy float64, scipy, hand algebra)."""

import numpy as np
import pytest
from scipy import ndimage

from jaxseg.data import corruptions

SPACING = (3.2, 3.0, 5.0)


def _image(shape=(24, 20, 6), channels=1, seed=0):
  rng = np.random.default_rng(seed)
  smooth = ndimage.gaussian_filter(rng.normal(0.0, 200.0, (*shape, channels)), (2, 2, 1, 0))
  return (smooth + 40.0).astype(np.float32)


@pytest.mark.parametrize("shift", list(corruptions.SHIFTS))
def test_level_zero_is_identity_and_every_level_keeps_shape_and_dtype(shift):
  image = _image(channels=2)
  names = ("CT", "T2")
  spec = corruptions.SHIFTS[shift]
  assert spec.num_levels >= 5 and len(spec.levels_other) == spec.num_levels
  out = corruptions.corrupt(image, SPACING, shift, 0, channel_names=names)
  np.testing.assert_array_equal(out, image)
  assert out is not image
  previous = 0.0
  for level in range(1, spec.num_levels):
    out = corruptions.corrupt(image, SPACING, shift, level, channel_names=names, seed=3)
    assert out.shape == image.shape and out.dtype == image.dtype
    change = float(np.abs(out.astype(np.float64) - image).mean())
    assert change > previous  # Strictly stronger with every level.
    previous = change
    np.testing.assert_array_equal(
      out, corruptions.corrupt(image, SPACING, shift, level, channel_names=names, seed=3)
    )  # Deterministic.


def test_noise_std_in_hu_and_relative_to_the_reference_intensity():
  image = np.zeros((64, 64, 16, 2), np.float32)
  image[..., 1] = np.linspace(0.0, 1000.0, 64 * 64 * 16).reshape(64, 64, 16)
  out = corruptions.corrupt(image, SPACING, "noise", 3, channel_names=("CT", "T1"), seed=1)
  noise = out.astype(np.float64) - image
  assert corruptions.SHIFTS["noise"].levels_ct[3] == 80.0
  assert noise[..., 0].std() == pytest.approx(80.0, rel=0.02)
  assert noise[..., 0].mean() == pytest.approx(0.0, abs=2.0)
  reference = np.percentile(image[..., 1].astype(np.float64), 99.0)  # 990.
  assert noise[..., 1].std() == pytest.approx(0.1 * reference, rel=0.02)
  other = corruptions.corrupt(image, SPACING, "noise", 3, channel_names=("CT", "T1"), seed=2)
  assert not np.array_equal(other, out)


def test_blur_equals_scipy_gaussian_filter_with_sigma_over_spacing():
  image = _image()
  out = corruptions.corrupt(image, SPACING, "blur", 2, channel_names=("CT",))
  sigma_mm = corruptions.SHIFTS["blur"].levels_ct[2]
  expected = ndimage.gaussian_filter(
    image[..., 0].astype(np.float64), [sigma_mm / 3.2, sigma_mm / 3.0, sigma_mm / 5.0], mode="nearest"
  )
  np.testing.assert_allclose(out[..., 0], expected, rtol=0, atol=1e-3)


def test_contrast_and_intensity_shift_are_exact():
  image = _image(channels=2)
  out = corruptions.corrupt(image, SPACING, "contrast", 4, channel_names=("CT", "MR"))
  np.testing.assert_allclose(out[..., 0], 0.2 * image[..., 0].astype(np.float64), rtol=1e-6, atol=1e-4)
  mean = image[..., 1].astype(np.float64).mean()
  np.testing.assert_allclose(out[..., 1], mean + 0.2 * (image[..., 1] - mean), rtol=1e-6, atol=1e-3)
  out = corruptions.corrupt(image, SPACING, "intensity_shift", 2, channel_names=("CT", "MR"))
  np.testing.assert_allclose(out[..., 0], image[..., 0] + 50.0, rtol=0, atol=1e-4)
  ref = np.percentile(image[..., 1].astype(np.float64), 99.0)
  np.testing.assert_allclose(out[..., 1], image[..., 1] + 0.1 * ref, rtol=0, atol=1e-3)


def test_low_resolution_keeps_linear_ramps_and_removes_fine_detail():
  x = np.arange(32, dtype=np.float64)
  ramp = (2.0 * x[:, None, None] - 3.0 * x[None, :, None] + np.zeros((1, 1, 4)))[..., None]
  out = corruptions.corrupt(ramp.astype(np.float32), SPACING, "low_resolution", 4, channel_names=("CT",))
  inner = (slice(10, -10), slice(10, -10))  # Away from the border (anti-aliasing, coarse samples).
  np.testing.assert_allclose(out[inner], ramp[inner], atol=1e-3)  # Linear interpolation keeps ramps exactly.
  checker = ((x[:, None, None] + x[None, :, None]) % 2 + np.zeros((1, 1, 4)))[..., None].astype(np.float32)
  out = corruptions.corrupt(checker, SPACING, "low_resolution", 2, channel_names=("CT",))
  assert out[..., 0].std() < 0.2 * checker.std()  # A 1-voxel pattern does not survive a factor 2.
  np.testing.assert_array_equal(out[0, 0, :, 0], out[0, 0, 0, 0])  # Z (slice axis) untouched: no mixing.


def test_ghosting_equals_shifted_copies_and_keeps_the_mean():
  image = _image(shape=(16, 24, 3))
  a = corruptions.SHIFTS["ghosting"].levels_ct[3]
  out = corruptions.corrupt(image, SPACING, "ghosting", 3, channel_names=("CT",))[..., 0].astype(np.float64)
  img = image[..., 0].astype(np.float64)
  n = corruptions.GHOSTS
  copies = np.mean([np.roll(img, j * 24 // n, axis=1) for j in range(n)], axis=0)
  np.testing.assert_allclose(out, (1 - a) * img + a * copies, atol=1e-3)
  assert out.mean() == pytest.approx(img.mean(), abs=1e-3)
  # Energy of the change (Parseval): a^2 times the energy of the non-comb k-space lines, computed directly.
  spectrum = np.fft.fft(img, axis=1)
  off_comb = np.ones(24, bool)
  off_comb[::n] = False
  energy = (a**2) * (np.abs(spectrum[:, off_comb]) ** 2).sum() / 24
  assert ((out - img) ** 2).sum() == pytest.approx(energy, rel=1e-5)


def test_bias_field_is_smooth_bounded_and_multiplicative():
  rng = np.random.default_rng(0)
  field = corruptions.bias_field((20, 16, 8), (2.0, 2.0, 3.0), rng)
  assert np.abs(field).max() == pytest.approx(1.0)
  assert abs(field.mean()) < 1.0 and field.std() > 0.05
  for axis in range(3):  # A cubic polynomial along every axis: its 4th finite difference vanishes.
    assert np.abs(np.diff(field, n=4, axis=axis)).max() < 1e-9
  image = _image(shape=(20, 16, 8), channels=2) + 500.0
  alpha = corruptions.SHIFTS["bias_field"].levels_other[4]
  out = corruptions.corrupt(image, (2.0, 2.0, 3.0), "bias_field", 4, channel_names=("T1", "T2"), seed=5)
  ratio = out.astype(np.float64) / image
  assert ratio.min() >= np.exp(-alpha) * (1 - 1e-5) and ratio.max() <= np.exp(alpha) * (1 + 1e-5)
  assert max(ratio.max(), 1 / ratio.min()) == pytest.approx(np.exp(alpha), rel=1e-5)  # Peak reached.
  expected = corruptions.bias_field((20, 16, 8), (2.0, 2.0, 3.0), np.random.default_rng([5, 1]))
  np.testing.assert_allclose(ratio[..., 1], np.exp(alpha * expected), rtol=1e-5)
  assert not np.allclose(ratio[..., 0], ratio[..., 1])  # One field per channel.


def test_bad_shift_level_or_shape_is_refused():
  image = _image()
  with pytest.raises(ValueError, match="unknown image-quality shift 'fog'"):
    corruptions.corrupt(image, SPACING, "fog", 1, channel_names=("CT",))
  with pytest.raises(ValueError, match="severity levels 0..4, got 5"):
    corruptions.corrupt(image, SPACING, "noise", 5, channel_names=("CT",))
  with pytest.raises(ValueError, match=r"\[X, Y, Z, C\]"):
    corruptions.corrupt(image[..., 0], SPACING, "noise", 1, channel_names=("CT",))
