"""LRA ListOps: a seeded generator following the LRA recipe, its reference evaluator and vocabulary.

An expression in the LRA release's string form, e.g. `( ( ( [MAX 2 ) 9 ) ] )`, has its value 0-9 as
label. Operators: MIN, MAX, MED (median, rounded down as LRA's `int(np.median(...))`), SM (sum modulo
10). The model sees it as LRA's input pipeline tokenises it (`rename_close_brackets` in
lra_benchmarks/listops/input_pipeline.py): parentheses deleted, then split on whitespace, e.g.
`[MAX 2 9 ]`, 4 tokens. That count is also LRA's length (`generate_tree` in lra_benchmarks/data/listops.py:
1 per digit, 2 per operator for itself and its `]`).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
PAD = "<pad>"
# Fixed, sorted vocabulary; id 0 is padding. (LRA's ids follow the iteration order of a Python set of
# the validation tokens, which changes with the hash seed; any fixed order is the same model.)
VOCABULARY = (PAD,) + tuple(sorted((END,) + OPERATORS + tuple(str(d) for d in range(10))))
TOKEN_IDS = {token: index for index, token in enumerate(VOCABULARY)}
NUM_CLASSES = 10
MAX_MISSES = 1_000_000  # consecutive draws without a new example before generation gives up


@dataclasses.dataclass(frozen=True)
class ListOpsSpec:
  """What to generate: depth and argument bounds, the kept lengths (LRA's count, bounds excluded:
  min_length < length < max_length), and the chance that a node above the maximum depth is an operator
  rather than a digit (LRA: VALUE_P = 0.25). The defaults are LRA's."""
  max_depth: int = 10
  max_args: int = 10
  min_length: int = 500
  max_length: int = 2000
  operator_probability: float = 0.25

  def __post_init__(self):
    if self.max_length - self.min_length < 2:
      raise ValueError(f"ListOps keeps min_length < length < max_length; no length fits {self.min_length} and "
                       f"{self.max_length}")


def _tree(rng: np.random.Generator, spec: ListOpsSpec, depth: int):
  if depth < spec.max_depth and rng.random() < spec.operator_probability:
    operator = OPERATORS[rng.integers(len(OPERATORS))]
    return (operator, [_tree(rng, spec, depth + 1) for _ in range(rng.integers(2, spec.max_args + 1))])
  return int(rng.integers(10))


def to_tokens(tree) -> list[str]:
  """LRA's string form, as its release files hold it: the operator and each argument, then the closing bracket, are joined pairwise
  in parentheses: `( ( ( [OP a ) b ) ] )`."""
  if isinstance(tree, int):
    return [str(tree)]
  operator, arguments = tree
  tokens = ["(", operator] + to_tokens(arguments[0]) + [")"]
  for argument in arguments[1:]:
    tokens = ["("] + tokens + to_tokens(argument) + [")"]
  return ["("] + tokens + [END, ")"]


def lra_tokens(source: str) -> list[str]:
  """An expression string as LRA's input pipeline tokenises it: `(` and `)` deleted, split on whitespace."""
  return re.sub(r"[()]", "", source).split()


def evaluate(tokens: list[str]) -> int:
  """Reference evaluator of an expression in token form, with or without parentheses (they only group)."""
  stack: list[list] = []
  result = None
  for token in tokens:
    if token in ("(", ")"):
      continue
    if token in OPERATORS:
      stack.append([token])
      continue
    if token == END:
      operator, *values = stack.pop()
      value = {"[MIN": min, "[MAX": max, "[MED": lambda v: int(np.median(v)),
               "[SM": lambda v: sum(v) % 10}[operator](values)
    else:
      value = int(token)
    if stack:
      stack[-1].append(value)
    else:
      result = value
  if result is None or stack:
    raise ValueError(f"malformed ListOps expression: {' '.join(tokens)}")
  return result


def generate(count: int, spec: ListOpsSpec, seed: int) -> list[tuple[list[str], int]]:
  """`count` distinct (tokens, label) examples as the model sees them (no parentheses), kept as LRA keeps
  them: min_length < len(tokens) < max_length, no expression twice; deterministic in seed."""
  rng = np.random.default_rng(seed)
  examples, seen, misses = [], set(), 0
  while len(examples) < count:
    tokens = [t for t in to_tokens(_tree(rng, spec, 1)) if t not in ("(", ")")]
    key = " ".join(tokens)
    if spec.min_length < len(tokens) < spec.max_length and key not in seen:
      seen.add(key)
      examples.append((tokens, evaluate(tokens)))
      misses = 0
    elif (misses := misses + 1) == MAX_MISSES:
      raise ValueError(f"ListOps: no new expression in {MAX_MISSES:,} draws after {len(examples)} of {count}; "
                       f"{spec} has too few distinct expressions or lengths in range")
  return examples


def encode(tokens: list[str], *, where: str = "") -> np.ndarray:
  """Token strings -> int32 ids; unknown tokens are an error naming `where` (file and line)."""
  try:
    return np.asarray([TOKEN_IDS[token] for token in tokens], np.int32)
  except KeyError as error:
    raise ValueError(f"{where}: unknown ListOps token {error.args[0]!r}") from None
