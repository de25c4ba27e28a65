"""README.md and docs/*.md against the repository, so that what they show keeps working: every relative link
and image resolves (a `#section` to a heading of its file); every `python X.py ...` command names an
existing script and only flags that script defines (absl `DEFINE_*`, the shared ones of bilateral_jax/cli.py
it adopts, or argparse `add_argument`, read from the sources), its `--config.a.b=...` overrides only fields
of the config it names, and its configs/ and studies/ files exist; every `make X` is a Makefile target,
every `bash X.sh` a script, every `pip install -e '.[extra]'` a declared extra, and every test a doc names
exists. The functional-API snippet of docs/api.md runs in tests/test_api.py, the benchmark commands in
tests/test_benchmarks.py."""
import ast
import collections
import importlib.util
import json
import pathlib
import re
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ABSL_FLAGS = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok", "verbosity", "v",
              "logtostderr", "alsologtostderr", "log_dir", "only_check_args"}
DEFAULT_CONFIG = "configs/default.py"  # bilateral_jax/cli.py's, for a command whose --config is a placeholder
DEFINE = re.compile(r"""\bDEFINE_(\w+)\(\s*["'](\w+)["']""")
ARGUMENT = re.compile(r"""add_argument\(\s*["']--([\w-]+)["']""")
FLAG = re.compile(r"(?:^|(?<=[\s\[|(]))--([A-Za-z][\w-]*)((?:\.\w+)*)(?:=(\S+)| ([^\s\[|-][^\s\]]*))?")


def fenced_blocks(text):
  """-> [(language, body)] of the ``` blocks, and the text with them removed."""
  blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
  return blocks, re.sub(r"^```\w*\n.*?^```", "", text, flags=re.M | re.S)


def commands(text):
  """Each shell command a doc shows: the lines of its bash blocks (continuations joined, comments dropped)
  and its inline code spans (which may wrap across lines)."""
  blocks, prose = fenced_blocks(text)
  found = []
  for language, body in blocks:
    if language in ("bash", "sh", "shell"):
      for line in body.replace("\\\n", " ").splitlines():
        found.append(re.sub(r"\s+#\s.*$", "", line).strip())
  found += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
  return [command for command in found if command]


def defined_flags(script: pathlib.Path) -> tuple[dict[str, str], bool]:
  """-> ({flag: kind}, uses absl) for a script, from its source and the bilateral_jax/cli.py flags it takes."""
  source = script.read_text()
  found = {name: kind for kind, name in DEFINE.findall(source)}
  found |= {name: "argparse" for name in ARGUMENT.findall(source)}
  if re.search(r"from bilateral_jax import [^\n]*\bcli\b", source):
    cli = (ROOT / "bilateral_jax" / "cli.py").read_text()
    for node in ast.parse(cli).body:
      segment = ast.get_source_segment(cli, node)
      called = not isinstance(node, ast.FunctionDef) or re.search(rf"\b{node.name}\(", source)
      if called:
        found |= {name: kind for kind, name in DEFINE.findall(segment)}
  return found, any(kind != "argparse" for kind in found.values())


@pytest.fixture(scope="module")
def flags_of():
  return {path: defined_flags(ROOT / path) for path in
          [*(p.name for p in ROOT.glob("*.py")), *(f"benchmarks/{p.name}" for p in ROOT.glob("benchmarks/*.py"))]}


def load_config(argument: str):
  path, _, variant = argument.partition(":")
  spec = importlib.util.spec_from_file_location(f"doc_config_{pathlib.Path(path).stem}", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def has_field(config, dotted: str) -> bool:
  for key in dotted.split("."):
    if not hasattr(config, "keys") or key not in config.keys():
      return False
    config = config[key]
  return True


def problems_in(command: str, flags_of: dict) -> list[str]:
  """What in one command does not exist: its script, a flag, a config field, a file it names."""
  match = re.search(r"(?:^|\s)python (\S+\.py)\b(.*)", command)
  if not match:
    return []
  problems = [f"{path}: no such file" for path in re.findall(r"\b((?:configs|studies)/[\w/.-]+\.py)", command)
              if not (ROOT / path).is_file()]
  script, arguments = match.groups()
  if script not in flags_of:
    return problems + [f"{script}: no such script"]
  defined, absl = flags_of[script]
  given = {name: joined or spaced for name, path, joined, spaced in FLAG.findall(arguments) if not path}
  config = given.get("config", "").rstrip("]")
  config = config if re.fullmatch(r"configs/\w+\.py(:\w+)?", config) else DEFAULT_CONFIG
  for name, path, *_ in FLAG.findall(arguments):
    known = (name in defined or (absl and name in ABSL_FLAGS) or (not absl and name == "help")
             or (absl and name.startswith("no") and defined.get(name[2:]) in ("bool", "boolean")))
    if not known:
      problems.append(f"{script}: no flag --{name}")
    elif path and defined.get(name) != "config_file":
      problems.append(f"{script}: --{name} takes no .field overrides")
    elif path and not has_field(load_config(config), path[1:]):
      problems.append(f"{script}: {config} has no field {path[1:]}")
  return problems


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  seen, found = collections.Counter(), set()
  for heading in re.findall(r"^#{1,6} (.+)$", fenced_blocks(path.read_text())[1], re.M):
    base = slug(heading)
    found.add(base if not seen[base] else f"{base}-{seen[base]}")
    seen[base] += 1
  return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_relative_link_resolves(doc):
  prose = fenced_blocks(doc.read_text())[1]
  links = re.findall(r"\]\(([^)\s]+)\)", prose)
  broken = []
  for link in links:
    if re.match(r"[a-z]+:", link):
      continue
    path, _, anchor = link.partition("#")
    target = (doc.parent / path).resolve() if path else doc
    if not target.exists():
      broken.append(f"{link}: no such file")
    elif anchor and target.suffix == ".md" and anchor not in anchors(target):
      broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
  assert not broken, f"{doc.name}: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_command_names_what_exists(doc, flags_of):
  text = doc.read_text()
  shown = commands(text)
  problems = [f"`{command}`: {problem}" for command in shown for problem in problems_in(command, flags_of)]
  targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), re.M))
  problems += [f"make {target}: no such target" for command in shown
               for target in re.findall(r"(?:^|\s)make (\w+)", command) if target not in targets]
  problems += [f"bash {script}: no such file" for command in shown
               for script in re.findall(r"(?:^|\s)bash (\S+\.sh)", command) if not (ROOT / script).is_file()]
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  extras = set(project["tool"]["setuptools"]["dynamic"]["optional-dependencies"])
  problems += [f"pip extra [{extra}]: not declared" for command in shown
               for extra in re.findall(r"pip install -e '?\.\[(\w+)\]", command) if extra not in extras]
  tests = {name for path in ROOT.glob("tests/*.py") for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)}
  problems += [f"{name}: no such test" for name in re.findall(r"`(test_\w+)`", text) if name not in tests]
  assert not problems, f"{doc.name}: {problems}"


def test_the_check_fails_on_what_does_not_exist(flags_of):
  """The command check is real: a made-up flag, field, script, config or negated non-boolean is caught."""
  assert not problems_in("python train.py --config configs/digits_vit.py --dry_run --nofresh_optimizer "
                         "--config.model.transformer.num_layers=2", flags_of)
  assert not problems_in("python study.py --variants studies/digits_positions.py --nopaired --attacks pgd", flags_of)
  assert not problems_in("python benchmarks/tpu_memory.py --topology v5e:2x2 --batch-per-chip 2", flags_of)
  assert problems_in("python train.py --no_such_flag", flags_of) == ["train.py: no flag --no_such_flag"]
  assert problems_in("python diagnose.py --attacks pgd", flags_of) == ["diagnose.py: no flag --attacks"]
  assert problems_in("python study.py --noseeds 0", flags_of) == ["study.py: no flag --noseeds"]
  assert problems_in("python train.py --config.model.transformer.no_field=1", flags_of) == [
      f"train.py: {DEFAULT_CONFIG} has no field model.transformer.no_field"]
  assert problems_in("python plot.py runs/a --workdir runs/a", flags_of) == ["plot.py: no flag --workdir"]
  assert problems_in("python nowhere.py", flags_of) == ["nowhere.py: no such script"]
  assert problems_in("python train.py --config configs/nowhere.py", flags_of) == ["configs/nowhere.py: no such file"]
  assert "--config.a.b" not in commands("```bash\npython train.py  # --config.a.b=1\n```")[0]


def section_linking(text: str, link: str) -> str:
  """The `## ` section of a markdown text that contains `link`."""
  sections = re.split(r"^(?=## )", text, flags=re.M)
  return next(section for section in sections if link in section)


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "results").glob("*.json")), ids=lambda path: path.stem)
def test_committed_per_seed_values_are_the_tables_they_back(path):
  """Each study summary committed under docs/results/ is linked from docs/results.md, holds >= 5 seeds of
  per-seed values for every variant, names its primary quantity and commit, and the section that links it
  shows each variant's mean primary value as the JSON has it."""
  summary = json.loads(path.read_text())
  text = (ROOT / "docs" / "results.md").read_text()
  link = f"results/{path.name}"
  assert link in text, f"docs/results.md does not link {link}"
  section = section_linking(text, link)
  assert summary["commit"].split("+")[0] in section, f"{path.name}: its commit is not named where it is linked"
  assert len(summary["seeds"]) >= 5 and all(summary["primary"] in quantities for quantities in summary["variants"].values())
  for variant, quantities in summary["variants"].items():
    primary = quantities[summary["primary"]]
    assert primary["seeds"] == summary["seeds"] and len(primary["values"]) == len(summary["seeds"]), variant
    assert primary["mean"] == pytest.approx(sum(primary["values"]) / len(primary["values"]))
    rows = [line for line in section.splitlines() if line.startswith(f"| {variant} |")]
    assert any(f"{primary['mean']:.3f}" in row for row in rows), f"{path.name}: no row of {variant!r} shows its mean"
