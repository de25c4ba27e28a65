"""The Transformer stack's settings, checked once when they are made."""
from __future__ import annotations

import dataclasses

from bilateral_jax.ops.dispatch import ATTENTION_PATHS
from bilateral_jax.ops.kernels import CONTENT_KERNELS, SPATIAL, SPATIAL_KERNELS

ATTENTIONS = ("standard", "alibi", "rope", "bilateral")
POSITION_TABLES = ("learned", "sinusoidal", "none")
BILATERAL_SPATIAL = SPATIAL_KERNELS + ("none",)
RESIDUALS = ("standard", "grc")
GRC_FORMS = ("convex", "boost")
SUBLAYERS = ("attention", "mlp")
NORMS = ("pre", "post")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots", "dots_no_batch")


def _choose(field: str, value, known) -> None:
  if value not in known:
    raise ValueError(f"{field}={value!r} is not one of: {', '.join(map(str, known))}")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """What the stack is. Each comparison of the paper is one field apart:

  attention: `standard` (positions from `position_table`, added to Y_0), `alibi`, `rope` (base `rope_base`
    on every coordinate axis), or `bilateral` (BSA: positions only through the `spatial` kernel; no cross
    terms). BSA with spatial `none` is its content kernel alone, with `position_table` added to Y_0 as for
    `standard` (`none`: the order-blind non-local-means filter): with `content` `dot` it is the standard
    baseline with a learned temperature per head, so that one ingredient changes at a time.
  content / spatial: BSA kernels (docs/method.md section 2; `ops.SPATIAL` holds each spatial kernel's spec);
    spatial `none` is the content-only non-local-means filter; `dot` (TUPE) takes its features from
    `position_table`, one table per coordinate axis looked up by the token's coordinates (the axes'
    rows concatenated), a learned vector for tokens with no place (CLS), then a LayerNorm (TUPE's); `shifted` learns a displacement per head; `asymmetric` (1-D) a
    bandwidth before and after the query. `gaussian` and `laplacian` see distance only: a bidirectional
    model with them is invariant to its grid's isometries (`sees_direction`).
  spatial_bandwidth_range: initial h_p of the first (most local) and last (most global) head, spread
    geometrically, in units of the coordinates (tokens, or patches); h_y^2 starts at sqrt(head_dim), and
    so does h_p^2 for spatial `dot`.
  residual / grc_form / grc_sublayers / grc_t_init / grc_per_channel: the Generalized Residual
    Connection (docs/method.md section 3); `boost` applies to the attention sublayer only, the MLP always
    uses `convex`.
  norm: `pre` or `post` LayerNorm.
  drop_path_rate: stochastic depth (DeiT/timm): each sublayer's branch F(y) of layer l is dropped per
    example with probability drop_path_rate * l / (num_layers - 1) (0 at the first layer) and scaled by
    1 / keep probability when kept; identity at evaluation.
  attention_path: how BSA is computed (the same numbers either way; `ops.dispatch`): `xla`
    (explicit logits), `folded` (spatial features appended to q and k, one `jax.nn.dot_product_attention`;
    kernels `ops.folded.foldable` accepts), `pallas` (flash kernel, memory linear in the length: spatial
    terms computed in the tiles, or TUPE on the folded q and k; key-only masks; interpreted on CPU),
    `auto` (the fastest measured path for the compile target).
    Not part of a checkpoint's identity.
  remat: what each block keeps for the backward pass (`nn.remat`): `none` (all), `full` (nothing:
    recomputed), `dots` (matmul outputs), `dots_no_batch` (matmuls without batch dims: the projections,
    not q.k or the attention-weighted sum). Same numbers and parameters; not part of a checkpoint's identity.
  """
  num_layers: int = 2
  num_heads: int = 4
  model_dim: int = 64
  mlp_dim: int = 256
  max_length: int = 512
  attention: str = "bilateral"
  rope_base: float = 10_000.0
  content: str = "gaussian"
  spatial: str = "gaussian"
  position_table: str = "learned"
  spatial_bandwidth_range: tuple[float, float] = (1.0, 64.0)
  residual: str = "grc"
  grc_form: str = "convex"
  grc_sublayers: tuple[str, ...] = ("attention",)
  grc_t_init: float = 0.1
  grc_per_channel: bool = False
  norm: str = "pre"
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: str = "float32"
  attention_path: str = "auto"
  remat: str = "none"

  def __post_init__(self):
    _choose("attention", self.attention, ATTENTIONS)
    _choose("content", self.content, CONTENT_KERNELS)
    _choose("spatial", self.spatial, BILATERAL_SPATIAL)
    _choose("position_table", self.position_table, POSITION_TABLES)
    _choose("residual", self.residual, RESIDUALS)
    _choose("grc_form", self.grc_form, GRC_FORMS)
    _choose("norm", self.norm, NORMS)
    _choose("dtype", self.dtype, DTYPES)
    _choose("attention_path", self.attention_path, ATTENTION_PATHS)
    _choose("remat", self.remat, REMAT)
    object.__setattr__(self, "grc_sublayers", tuple(self.grc_sublayers))
    object.__setattr__(self, "spatial_bandwidth_range", tuple(self.spatial_bandwidth_range))
    for sublayer in self.grc_sublayers:
      _choose("grc_sublayers entry", sublayer, SUBLAYERS)
    for field in ("num_layers", "num_heads", "model_dim", "mlp_dim", "max_length"):
      if int(getattr(self, field)) < 1:
        raise ValueError(f"{field} must be a positive integer, got {getattr(self, field)!r}")
    if self.model_dim % self.num_heads:
      raise ValueError(f"model_dim ({self.model_dim}) must be divisible by num_heads ({self.num_heads})")
    low, high = self.spatial_bandwidth_range
    if not 0 < low <= high:
      raise ValueError(f"spatial_bandwidth_range must satisfy 0 < low <= high, got {(low, high)}")
    if not self.rope_base > 1.0:
      raise ValueError(f"rope_base must exceed 1, got {self.rope_base}")
    if not 0.0 < self.grc_t_init < 1.0:
      raise ValueError(f"grc_t_init must lie in (0, 1) (t = sigmoid(theta)), got {self.grc_t_init}")
    for field in ("dropout_rate", "drop_path_rate"):
      if not 0.0 <= getattr(self, field) < 1.0:
        raise ValueError(f"{field} must lie in [0, 1), got {getattr(self, field)}")
    if self.uses_position_table and self.position_table == "none":
      raise ValueError(f"attention='bilateral' with spatial={self.spatial!r} needs position_table learned|sinusoidal")

  def drop_path(self, layer: int) -> float:
    """The stochastic-depth rate of `layer` (0-based): linear from 0 to drop_path_rate over the stack."""
    return self.drop_path_rate * layer / max(self.num_layers - 1, 1)

  @property
  def head_dim(self) -> int:
    return self.model_dim // self.num_heads

  @property
  def additive_positions(self) -> bool:
    """Whether a position table is added to the token stream (the standard baseline, and BSA's content
    kernel alone)."""
    reads_table = self.attention == "standard" or (self.attention == "bilateral" and self.spatial == "none")
    return reads_table and self.position_table != "none"

  @property
  def uses_position_table(self) -> bool:
    return self.additive_positions or (self.attention == "bilateral" and self.spatial != "none"
                                       and SPATIAL[self.spatial].features == "table")

  @property
  def sees_direction(self) -> bool:
    """Whether a bidirectional model of this stack can tell its grid from a reflection of it (docs/method.md
    section 2 "Direction"): not with BSA's distance-only kernels (nor with no positions at all)."""
    if self.attention == "bilateral" and self.spatial != "none":
      return SPATIAL[self.spatial].directional
    return self.attention == "rope" or self.additive_positions
