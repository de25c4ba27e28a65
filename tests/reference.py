"""Explicit float64 numpy references of docs/method.md's formulas, written for clarity, not speed."""
import numpy as np


def spatial_term(p_i, p_j, h_p, spatial, shift=None):
  """S(P_i, P_j; h_p) for one pair and one head; 0 if either token has no place (NaN). h_p is the head's
  bandwidth ((before, after) for `asymmetric`), shift its displacement (`shifted`)."""
  if np.isnan(p_i).any() or np.isnan(p_j).any():
    return 0.0
  if spatial == "gaussian":
    return -np.sum((p_i - p_j) ** 2) / (2 * h_p**2)
  if spatial == "shifted":
    return -np.sum((p_i - p_j - shift) ** 2) / (2 * h_p**2)
  if spatial == "asymmetric":
    (r_i,), (r_j,) = p_i, p_j
    return -(r_i - r_j) / h_p[0] if r_j <= r_i else -(r_j - r_i) / h_p[1]
  if spatial == "laplacian":
    return -np.sqrt(np.sum((p_i - p_j) ** 2)) / h_p
  if spatial == "dot":
    return np.dot(p_i, p_j) / h_p**2
  raise ValueError(spatial)


def bilateral_logits(q, k, q_pos, k_pos, h_y, h_p, content, spatial, shift=None):
  """[b, n, h, d] x [b, m, h, d] -> [b, h, n, m], float64."""
  q, k = np.float64(q), np.float64(k)
  h_y, h_p = np.float64(h_y), np.float64(h_p)
  diff = q[:, :, None] - k[:, None, :]  # [b, n, m, h, d]
  if content == "gaussian":
    c = -np.sum(diff**2, axis=-1) / (2 * h_y**2)
  else:
    c = np.sum(q[:, :, None] * k[:, None, :], axis=-1) / h_y**2
  logits = np.transpose(c, (0, 3, 1, 2))
  if q_pos is None:
    return logits
  q_pos, k_pos = np.float64(q_pos), np.float64(k_pos)
  heads = q.shape[2]
  s = np.zeros((heads, q.shape[1], k.shape[1]))
  for h in range(heads):
    for i in range(q.shape[1]):
      for j in range(k.shape[1]):
        p_i = q_pos[i, h] if q_pos.ndim == 3 else q_pos[i]
        p_j = k_pos[j, h] if k_pos.ndim == 3 else k_pos[j]
        s[h, i, j] = spatial_term(p_i, p_j, h_p[h], spatial, None if shift is None else np.float64(shift)[h])
  return logits + s[None]


def masked_softmax(logits, keep):
  """Softmax over the last axis among kept keys; masked weights are exactly 0."""
  keep = np.broadcast_to(keep, logits.shape)
  shifted = np.where(keep, logits, -np.inf)
  shifted = shifted - np.max(shifted, axis=-1, keepdims=True)
  w = np.where(keep, np.exp(shifted), 0.0)
  return w / np.sum(w, axis=-1, keepdims=True)


def attention(logits, v, keep):
  """u_i = sum_j w_ij v_j / sum_j w_ij with w = exp(logit) on kept pairs -> [b, n, h, d]."""
  w = masked_softmax(logits, keep)
  return np.einsum("bhnm,bmhd->bnhd", w, np.float64(v))


def keep_mask(batch, heads, n, m, padding=None, causal=False):
  keep = np.ones((batch, heads, n, m), bool)
  if padding is not None:
    keep &= padding[:, None, None, :]
  if causal:
    keep &= np.tril(np.ones((n, m), bool))
  return keep
