"""Image geometry shared by the FHIR and DICOM sides: voxel grid, patient coordinates, habitat shells.

Every synthetic series is a 32 x 32 x 8 grid, 2 mm in plane and 4 mm between slices, axial
(ImageOrientationPatient 1\\0\\0\\0\\1\\0), so voxel (slice k, row i, column j) has its centre at
patient LPS ``(X0 + 2 j, Y0 + 2 i, Z0 + 4 k)`` mm.  A glioblastoma's habitat map is a set of
concentric shells around the tumour centre; biopsy coordinates written to FHIR are points in this
frame, so the habitat at a biopsy's coordinates can be read from the DICOM habitat SEG.
"""

from __future__ import annotations

import numpy as np

SHAPE = (8, 32, 32)  # slices, rows, columns
PIXEL_MM = 2.0
SLICE_MM = 4.0
ORIGIN_MM = (-32.0, -32.0, -16.0)  # centre of voxel (0, 0, 0): x, y, z
#: Tumour centre in patient coordinates (mm): the middle of the grid.
CENTRE_MM = np.array([ORIGIN_MM[0] + 16 * PIXEL_MM, ORIGIN_MM[1] + 16 * PIXEL_MM, ORIGIN_MM[2] + 3.5 * SLICE_MM])
HABITAT_RADIUS_MM = 24.0
#: (outer radius as a fraction of HABITAT_RADIUS_MM, habitat) from the centre outwards.
HABITAT_SHELLS = (
    (0.25, "habitat_necrotic"),
    (0.50, "habitat_hypercellular"),
    (0.75, "habitat_enhancing"),
    (1.00, "habitat_low_cellularity"),
    (1.50, "habitat_oedema"),
)
#: How far from the centre biopsies are taken in z (mm), so they stay inside the 8-slice grid.
MAX_DZ_MM = 12.0


def voxel_centres_mm() -> np.ndarray:
    """Patient coordinates (x, y, z) of every voxel centre, shape SHAPE + (3,)."""
    k, i, j = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]].astype(float)
    return np.stack([ORIGIN_MM[0] + j * PIXEL_MM, ORIGIN_MM[1] + i * PIXEL_MM, ORIGIN_MM[2] + k * SLICE_MM], axis=-1)


def _shell_index(r_mm: np.ndarray | float) -> np.ndarray:
    """Index into HABITAT_SHELLS for radii (mm); beyond the outer shell counts as the outer shell."""
    bounds = np.array([f * HABITAT_RADIUS_MM for f, _ in HABITAT_SHELLS])
    return np.minimum(np.searchsorted(bounds, np.asarray(r_mm), side="right"), len(bounds) - 1)


def habitat_at(point_mm) -> str:
    """The habitat at a point; beyond the oedema rim (normal brain) counts as oedema."""
    r = float(np.linalg.norm(np.asarray(point_mm, float) - CENTRE_MM))
    return HABITAT_SHELLS[int(_shell_index(r))][1]


def border_distance_mm(point_mm) -> float:
    """Distance (mm) from a point to the nearest border of the habitat shell it lies in."""
    r = float(np.linalg.norm(np.asarray(point_mm, float) - CENTRE_MM))
    i = int(_shell_index(r))
    inner = HABITAT_SHELLS[i - 1][0] * HABITAT_RADIUS_MM if i else None
    outer = HABITAT_SHELLS[i][0] * HABITAT_RADIUS_MM
    return min(abs(outer - r), abs(r - inner)) if inner is not None else abs(outer - r)


def sample_point_in(habitat: str, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random point (mm) of one habitat shell, inside the grid and within MAX_DZ_MM of the
    centre slice."""
    i = [h for _, h in HABITAT_SHELLS].index(habitat)
    inner = HABITAT_SHELLS[i - 1][0] * HABITAT_RADIUS_MM if i else 0.0
    outer = HABITAT_SHELLS[i][0] * HABITAT_RADIUS_MM
    while True:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        r = (rng.uniform(inner ** 3, outer ** 3)) ** (1 / 3)  # uniform in volume
        point = CENTRE_MM + r * direction
        if abs(point[2] - CENTRE_MM[2]) <= MAX_DZ_MM and inside_grid(point):
            return point


def inside_grid(point_mm) -> bool:
    """Whether a point lies within the outermost voxel centres (so it has a voxel of the map)."""
    x, y, z = (float(v) for v in point_mm)
    return (ORIGIN_MM[0] <= x <= ORIGIN_MM[0] + (SHAPE[2] - 1) * PIXEL_MM
            and ORIGIN_MM[1] <= y <= ORIGIN_MM[1] + (SHAPE[1] - 1) * PIXEL_MM
            and ORIGIN_MM[2] <= z <= ORIGIN_MM[2] + (SHAPE[0] - 1) * SLICE_MM)


def habitat_masks() -> dict[str, np.ndarray]:
    """The habitat map on the voxel grid: a boolean mask per habitat (normal brain beyond the oedema)."""
    r = np.linalg.norm(voxel_centres_mm() - CENTRE_MM, axis=-1)
    index = np.where(r <= HABITAT_SHELLS[-1][0] * HABITAT_RADIUS_MM, _shell_index(r), -1)
    return {h: index == i for i, (_, h) in enumerate(HABITAT_SHELLS)}
