"""Shared pieces of the phantom generators: shapes, smooth fields, NIfTI files.

Coordinates are float32 arrays of positions in mm (pixels for microscopy),
one array per axis, all of the image's voxel shape. Shapes are implicit
functions: a point lies inside when its normalised radius is < 1.
"""

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

Coords = tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class PhantomCase:
  """One generated case, in NIfTI array order.

  Attributes:
    image: [X, Y, Z] or [X, Y, Z, C] voxel values in the dtype to store
      (int16 HU for CT, float32 for MR, uint16 counts for microscopy).
    label: uint8 [X, Y, Z] ground-truth labels.
    affine: float64 [4, 4] voxel index -> world position of both arrays (mm;
      micrometres for microscopy).
  """

  image: np.ndarray
  label: np.ndarray
  affine: np.ndarray


def grid_axes(shape: Sequence[int], spacing: Sequence[float], centre: Sequence[float]) -> Coords:
  """Returns the 1D coordinates (mm) of voxel centres along each axis.

  Args:
    shape: number of voxels per axis.
    spacing: voxel size per axis (mm).
    centre: voxel index (may be fractional) that maps to coordinate 0.

  Returns:
    One increasing float32 array of length shape[i] per axis.
  """
  return tuple((np.arange(n, dtype=np.float32) - c) * np.float32(s) for n, s, c in zip(shape, spacing, centre))


def voxel_grid(axes: Coords) -> Coords:
  """Expands `grid_axes` to one array of the full voxel shape per axis."""
  return tuple(np.meshgrid(*axes, indexing="ij"))


def box_slices(axes: Coords, centre: Sequence[float], half_extent: float) -> tuple[slice, ...]:
  """Index ranges of the voxels within `half_extent` of `centre` on every axis.

  Args:
    axes: increasing 1D coordinates per axis (mm), as from `grid_axes`.
    centre: the box centre, one coordinate per axis (mm).
    half_extent: half the box side (mm).
  """
  return tuple(
    slice(int(np.searchsorted(a, c - half_extent)), int(np.searchsorted(a, c + half_extent, side="right")))
    for a, c in zip(axes, centre)
  )


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
  """Returns the 3x3 rotation R = Rz @ Ry @ Rx for angles about x, y, z."""
  ax, ay, az = angles_rad
  cx, sx, cy, sy, cz, sz = (np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az))
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def to_local(coords: Coords, centre: Sequence[float], rotation: np.ndarray | None = None) -> Coords:
  """Moves coordinates into a shape's frame: R^T (p - centre)."""
  shifted = [c - np.float32(o) for c, o in zip(coords, centre)]
  if rotation is None:
    return tuple(shifted)
  rt = np.asarray(rotation, dtype=np.float32).T
  return tuple(sum(rt[i, j] * shifted[j] for j in range(len(shifted))) for i in range(len(shifted)))


def superellipsoid_radius(local: Coords, semi_axes: Sequence[float], exponent: float = 2.0) -> np.ndarray:
  """Normalised radius (sum |x_i / a_i|^e)^(1/e); < 1 inside the shape.

  Args:
    local: coordinates in the shape's frame (mm), one array per axis.
    semi_axes: semi-axis lengths (mm), one per axis.
    exponent: 2 for an ellipsoid, larger for a boxier shape.
  """
  if exponent == 2.0:
    return np.sqrt(sum(np.square(c * np.float32(1.0 / a)) for c, a in zip(local, semi_axes)))
  total = sum(np.abs(c * np.float32(1.0 / a)) ** np.float32(exponent) for c, a in zip(local, semi_axes))
  return total ** np.float32(1.0 / exponent)


def plane_wave_field(
  rng: np.random.Generator, coords: Coords, *, wavelength: tuple[float, float], num_waves: int
) -> np.ndarray:
  """A smooth random field with zero mean and unit standard deviation.

  Sum of `num_waves` cosines with random directions, wavelengths drawn
  uniformly from the range `wavelength` (in the units of `coords`) and
  random phases, scaled by sqrt(2 / n) so that the field's standard
  deviation over space is about 1.

  Returns:
    float32 array of the coordinates' shape.
  """
  ndim = len(coords)
  field = np.zeros(coords[0].shape, np.float32)
  for _ in range(num_waves):
    direction = rng.normal(size=ndim)
    direction /= np.linalg.norm(direction)
    k = direction * (2.0 * np.pi / rng.uniform(*wavelength))
    phase = rng.uniform(0.0, 2.0 * np.pi)
    arg = sum(np.float32(kk) * c for kk, c in zip(k, coords))
    field += np.cos(arg + np.float32(phase))
  return field * np.float32(np.sqrt(2.0 / num_waves))


def deform(
  rng: np.random.Generator,
  coords: Coords,
  *,
  amplitude_mm: float,
  wavelength_mm: tuple[float, float],
  num_waves: int = 4,
) -> Coords:
  """Applies a smooth random displacement field p -> p + u(p).

  Each component of u is an independent `plane_wave_field` times
  `amplitude_mm`, so the displacement has about that standard deviation.
  Evaluating shapes at the displaced coordinates deforms them smoothly.
  """
  return tuple(
    c + np.float32(amplitude_mm) * plane_wave_field(rng, coords, wavelength=wavelength_mm, num_waves=num_waves)
    for c in coords
  )


def correlated_noise(
  rng: np.random.Generator, shape: Sequence[int], sigma_voxels: Sequence[float], std: float
) -> np.ndarray:
  """Gaussian noise blurred by `sigma_voxels`, rescaled to std `std`."""
  noise = rng.standard_normal(shape, dtype=np.float32)
  noise = ndimage.gaussian_filter(noise, sigma_voxels)
  return noise * np.float32(std / max(float(noise.std()), 1e-12))


def diagonal_affine(spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
  """RAS affine: voxel (i, j, k) -> origin + spacing * (i, j, k).

  Args:
    spacing: voxel size per axis (mm, or micrometres for microscopy).
    origin: world position of voxel (0, 0, 0), same unit.
  """
  affine = np.eye(4)
  affine[:3, :3] = np.diag(np.asarray(spacing, np.float64))
  affine[:3, 3] = np.asarray(origin, np.float64)
  return affine


def write_nifti(path: pathlib.Path, array: np.ndarray, affine: np.ndarray, *, spatial_unit: str = "mm") -> None:
  """Writes `array` as .nii.gz in its own dtype, with qform = sform = affine.

  Integer arrays are stored unscaled with scl_slope 1 and scl_inter 0, so
  stored values are the physical values (HU for CT). pixdim follows the
  affine's voxel sizes; a 4th (channel) axis gets pixdim 1.
  """
  image = nib.Nifti1Image(array, affine)
  image.set_qform(affine, code=1)
  image.set_sform(affine, code=1)
  image.header.set_xyzt_units(xyz=spatial_unit, t="sec")
  image.header.set_slope_inter(1.0, 0.0)
  nib.save(image, str(path))


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes `obj` as indented JSON."""
  path.write_text(json.dumps(obj, indent=2) + "\n")
