"""Every command in README.md and docs/*.md runs as written (scaled down).

``extract_commands`` finds every ``python cli.py ...``, ``python benchmarks/...`` and
``python -m ...`` command in the fenced and indented code blocks and the inline code of the
documents; ``plan`` decides how each is checked (the table ``RULES`` below, first match
wins) and the slow test runs them all in a subprocess from the repository root, as a user
would. ``python -m pytest tests/test_documented_commands.py -m slow`` (a few minutes).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GLUE_RTE = REPO.parent / "shared" / "data" / "glue" / "RTE"

COMMAND = re.compile(
    r"^(?:[A-Z_]+=\S+\s+)*"                      # OMP_NUM_THREADS=1 PYTHONPATH=. ...
    r"(?:/usr/bin/time\s+-f\s+\"[^\"]*\"\s+)?"   # /usr/bin/time -f "..."
    r"(python\s+(?:cli\.py|benchmarks/\S+\.py|-m\s+\S+)(?:\s.*)?)$"
)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)

SCALE_FIT = ["--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false"]
TINY_GLUE = ["--model.init_args.pretrained", "null", "--model.init_args.config",
             '{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 6, "num_attention_heads": 2, '
             '"intermediate_size": 64, "vocab_size": 3000}']
PLACEHOLDER = re.compile(r"<[^>]+>|\$\w+|/data/|/ckpt/|/path/to|\bRUN/|\.\.\.|runs/\.\.\.")


def _commands_in_block(block: str) -> list[str]:
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        line = re.sub(r"\s+#.*$", "", line)  # trailing comment (commands here hold no '#')
        match = COMMAND.match(line)
        if match:
            out.append(re.sub(r"\s+", " ", match.group(1)).strip())
    return out


def extract_commands(text: str) -> list[str]:
    """The commands of a Markdown document, in order: fenced blocks, indented blocks, inline code.

    Example:
        >>> extract_commands("```bash\\nOMP_NUM_THREADS=1 python cli.py fit \\\\\\n  --config a.yaml  # x\\n```\\n"
        ...                  "Run `python benchmarks/b.py --quick` or `pip install x`.\\n    python -m mod --y\\n")
        ['python cli.py fit --config a.yaml', 'python -m mod --y', 'python benchmarks/b.py --quick']
    """
    commands = [c for block in FENCE.findall(text) for c in _commands_in_block(block)]
    rest = FENCE.sub("", text)
    indented = "\n".join(line[4:] for line in rest.splitlines() if line.startswith("    "))
    commands += _commands_in_block(indented)
    commands += [c for span in re.findall(r"`([^`\n]+)`", rest) for c in _commands_in_block(span)]
    return commands


@dataclass
class Check:
    command: str   # as documented
    mode: str      # run | print_config | help | skip
    argv: list[str]
    why: str


def _lightning(cmd: list[str]) -> bool:
    return len(cmd) > 2 and cmd[1] == "cli.py" and cmd[2] in ("fit", "validate", "test", "predict")


def _config(cmd: list[str]) -> str:
    return cmd[cmd.index("--config") + 1] if "--config" in cmd else ""


# How each documented command is checked; first match wins. (predicate, mode, why)
RULES = [
    (lambda c, s: c[:3] == ["python", "-m", "pytest"], "skip", "runs the test suite itself"),
    (lambda c, s: c[1:] == ["cli.py"] or (not _lightning(c) and "..." in s) or (_lightning(c) and "--config" not in c),
     "skip", "a fragment in prose"),
    (lambda c, s: c[:3] == ["python", "cli.py", "sweep"], "help",
     "sweeps train many runs (minutes): their parser is checked; tests/test_research_* run them scaled down"),
    (lambda c, s: c[:3] == ["python", "cli.py", "probe"], "run",
     "on the checkpoint of a scaled-down configs/toy_memel.yaml fit (RUN, runs/... replaced)"),
    (lambda c, s: c[1] == "benchmarks/glue_step_time.py" and not PLACEHOLDER.search(s), "run",
     "--quick: one round of one step"),
    (lambda c, s: c[1] == "-m", "help", "an analysis of a sweep's outputs (not here): parser checked"),
    (lambda c, s: c[1].startswith("benchmarks/"), "help", "a benchmark of minutes (or a GPU): parser checked"),
    (lambda c, s: c[:2] == ["python", "cli.py"] and len(c) == 3 and c[2] == "--help", "run", "as written"),
    (lambda c, s: _lightning(c) and any(k in _config(c) for k in ("swin_", "pythia70m", "pythia410m", "hko7")),
     "print_config", "a GPU cluster and data that are not here (ImageNet, the Pile, HKO-7): parsed only"),
    (lambda c, s: _lightning(c) and "bert_glue" in _config(c) and (bool(PLACEHOLDER.search(s)) or not GLUE_RTE.is_dir()),
     "print_config", "needs a GLUE folder or checkpoint that is not here: parsed only"),
    (lambda c, s: _lightning(c) and "bert_glue" in _config(c), "run",
     "2 steps of a tiny untrained BERT (no network) with a tokenizer of the test fixtures"),
    (lambda c, s: _lightning(c) and bool(PLACEHOLDER.search(s)), "print_config", "placeholder paths: parsed only"),
    (lambda c, s: _lightning(c), "run", "2 training steps, 1 validation batch, outputs in a temporary folder"),
    (lambda c, s: True, "run", "as written"),
]


# Shell variables of documented loops (``for cfg in baseline memel; do ...``): one value each.
SHELL_VARS = {'"$@"': "", "$cfg": "memel", "$seed": "0", "$name": "demo"}


def plan(command: str) -> Check:
    text = re.sub(r"<([^>]+)>", lambda m: "<" + m.group(1).replace(" ", "_") + ">", command)  # <mnli checkpoint>
    for var, value in SHELL_VARS.items():
        text = text.replace(var, value)
    cmd = shlex.split(text)
    if cmd[1:3] == ["-m", "memel_lightning.cli"]:  # the same entry point
        cmd = ["python", "cli.py", *cmd[3:]]
    for predicate, mode, why in RULES:
        if predicate(cmd, text):
            return Check(command, mode, cmd, why)
    raise AssertionError("unreachable")


def documented() -> list[tuple[str, str]]:
    seen, out = set(), []
    for doc in DOCS:
        for command in extract_commands(doc.read_text()):
            if command not in seen:
                seen.add(command)
                out.append((doc.relative_to(REPO).as_posix(), command))
    return out


# ---------------------------------------------------------------------- fast unit tests
def test_extractor_finds_the_readme_commands() -> None:
    readme = extract_commands((REPO / "README.md").read_text())
    assert "python cli.py fit --config configs/quickstart.yaml" in readme
    assert any(c.startswith("python benchmarks/glue_step_time.py") for c in readme)
    assert any(c.startswith("python cli.py probe") for c in readme)


def test_every_documented_command_has_a_plan() -> None:
    checks = [plan(c) for _, c in documented()]
    assert len(checks) > 20
    modes = {c.mode for c in checks}
    assert {"run", "print_config"} <= modes
    assert plan("python cli.py fit --config configs/quickstart.yaml").mode == "run"
    assert plan("python cli.py fit --config configs/swin_memel.yaml --data.root /data/imagenet").mode == "print_config"


# ---------------------------------------------------------------------- the slow smoke run
def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _scaled(check: Check, tmp: Path, probe_run: dict[str, str]) -> list[str]:
    argv = list(check.argv)
    argv[0] = sys.executable
    if check.mode == "help":
        return argv + ["--help"]
    if check.mode == "print_config":
        return argv + ["--print_config"]
    if argv[1] == "benchmarks/glue_step_time.py":
        return argv + ["--quick"]
    if argv[1:3] == ["cli.py", "probe"]:
        out = []
        skip = False
        for i, a in enumerate(argv):
            if skip:
                skip = False
                continue
            if a in ("--config", "--ckpt_path"):
                out += [a, probe_run[a]]
                skip = True
            else:
                out.append(a)
        return out + ["--out", str(tmp / "probe"), "--max_batches", "1"]
    if _lightning(argv):
        extra = list(SCALE_FIT) + [f"--trainer.default_root_dir={tmp}", f"--trainer.logger.init_args.save_dir={tmp}/runs"]
        if "bert_glue" in _config(argv):
            from tests.glue_fixtures import make_tokenizer

            extra += TINY_GLUE + ["--data.tokenizer", make_tokenizer(tmp / "tok")]
        return argv + extra
    return argv


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("probe_run")
    subprocess.run([sys.executable, "cli.py", "fit", "--config", "configs/toy_memel.yaml", *SCALE_FIT,
                    f"--trainer.default_root_dir={tmp}", f"--trainer.logger.init_args.save_dir={tmp}"],
                   cwd=REPO, env=_env(), check=True, capture_output=True, text=True)
    (ckpt,) = tmp.rglob("*.ckpt")
    (config,) = tmp.rglob("config.yaml")
    return {"--config": str(config), "--ckpt_path": str(ckpt)}


@pytest.mark.slow
@pytest.mark.parametrize("doc, command", documented())
def test_documented_command_runs(doc: str, command: str, tmp_path: Path, probe_run: dict[str, str]) -> None:
    check = plan(command)
    if check.mode == "skip":
        pytest.skip(check.why)
    argv = _scaled(check, tmp_path, probe_run)
    done = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{doc}: {command}\n({check.why})\n{' '.join(argv)}\n{done.stderr[-3000:]}"
