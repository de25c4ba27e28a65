"""A seeded generator of the Pathfinder task (Linsley et al. 2018, as used by LRA): dashed contours on a
dark canvas, two round markers; the label is 1 when both markers sit on the ends of the same contour.

Every image holds two target contours and `distractors` more; a positive puts the markers on the two
ends of target A, a negative on one end of A and one end of B, so the label cannot be read off the number
of contours or markers. `contour_length` (segments per contour) sets the difficulty: LRA's easy, medium
and hard use 6, 9 and 14.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PathfinderSpec:
  side: int = 32
  contour_length: int = 14
  segment_length: float = 2.0
  max_turn: float = 0.6  # radians per segment
  distractors: int = 2
  marker_radius: float = 1.2


@dataclasses.dataclass(frozen=True)
class PathfinderExample:
  image: np.ndarray  # uint8 [side, side]
  label: int
  markers: tuple[tuple[float, float], tuple[float, float]]
  contours: tuple[np.ndarray, ...]  # vertices [contour_length + 1, 2] (row, col); the first two are targets


def _contour(rng: np.random.Generator, spec: PathfinderSpec) -> np.ndarray:
  """A smooth random path that stays inside the canvas (with room for the markers)."""
  margin = spec.marker_radius + 1.0
  while True:
    point = rng.uniform(margin, spec.side - 1 - margin, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    vertices = [point]
    for _ in range(spec.contour_length):
      angle += rng.uniform(-spec.max_turn, spec.max_turn)
      point = point + spec.segment_length * np.array([np.sin(angle), np.cos(angle)])
      vertices.append(point)
    vertices = np.asarray(vertices)
    if np.all((vertices >= margin) & (vertices <= spec.side - 1 - margin)):
      return vertices


def _draw_dashed(canvas: np.ndarray, vertices: np.ndarray) -> None:
  """Draws every other segment (dashes), sampling points densely along each."""
  for index in range(0, len(vertices) - 1, 2):
    for t in np.linspace(0.0, 1.0, 8):
      row, col = np.rint(vertices[index] * (1 - t) + vertices[index + 1] * t).astype(int)
      canvas[row, col] = 255


def _draw_marker(canvas: np.ndarray, center, radius: float) -> None:
  rows, cols = np.mgrid[: canvas.shape[0], : canvas.shape[1]]
  canvas[(rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2] = 255


def generate_one(rng: np.random.Generator, spec: PathfinderSpec, label: int) -> PathfinderExample:
  contours = tuple(_contour(rng, spec) for _ in range(2 + spec.distractors))
  canvas = np.zeros((spec.side, spec.side), np.uint8)
  for vertices in contours:
    _draw_dashed(canvas, vertices)
  first, second = contours[0], contours[1]
  markers = (tuple(first[0]), tuple(first[-1] if label else second[-1]))
  for center in markers:
    _draw_marker(canvas, center, spec.marker_radius)
  return PathfinderExample(canvas, label, markers, contours)


def generate(count: int, spec: PathfinderSpec, seed: int) -> list[PathfinderExample]:
  """`count` examples, half positive, in a seeded order; deterministic in seed."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(count) % 2)
  return [generate_one(rng, spec, int(label)) for label in labels]
