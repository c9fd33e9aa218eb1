"""The pipeline runs under cmd and PowerShell as under bash: stage commands use no shell-specific syntax,
torch.compile is off by default, and attention goes through SDPA only (no FlashAttention build)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import REPO

# DVC fills `${...}` from params.yaml before any shell sees the command: that syntax is allowed.
DVC_INTERPOLATION = re.compile(r"\$\{[A-Za-z0-9_.\[\]-]+\}")

# (pattern, why it breaks under cmd or PowerShell)
SHELL_SPECIFIC: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"&&|\|\|"), "&& / || chaining (Windows PowerShell 5 has neither)"),
    (re.compile(r"\|"), "pipe (cmd and PowerShell pass objects/text differently)"),
    (re.compile(r";"), "; separator (cmd does not split on it)"),
    (re.compile(r"&"), "& (cmd separator, PowerShell call operator)"),
    (re.compile(r"[<>]"), "redirection (cmd, PowerShell and bash differ, e.g. 2>&1, <)"),
    (re.compile(r"\$"), "$VAR or $(...) (bash/PowerShell variables; cmd uses %VAR%)"),
    (re.compile(r"%[A-Za-z_][A-Za-z0-9_]*%"), "%VAR% (cmd only)"),
    (re.compile(r"`"), "backtick (bash substitution, PowerShell escape)"),
    (re.compile(r"\\"), "backslash (line continuation or Windows-only path: use forward slashes)"),
    (re.compile(r"'"), "single quotes (cmd passes them through literally)"),
    (re.compile(r"[*?]"), "glob (bash expands it, cmd does not)"),
    (re.compile(r"~"), "~ (home expansion is bash-only)"),
    (re.compile(r"[(){}]"), "subshell or brace group"),
    (re.compile(r"!"), "! (bash history expansion)"),
    (re.compile(r"\^"), "^ (cmd escape character)"),
    (re.compile(r"#"), "# (comment in bash and PowerShell, literal in cmd)"),
    (re.compile(r"(^|\s)\.{1,2}/"), "./script (needs a Unix executable bit and shebang)"),
    (re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*=\S"), "VAR=value prefix (bash-only environment)"),
    (re.compile(r"(^|\s)(export|set|source|env|call|cd)\s"), "shell builtin (export/set/source/env/call/cd)"),
    (re.compile(r"(^|\s)python3(\s|$)"), "python3 (absent on Windows: use python)"),
    (re.compile(r"\n"), "multi-line command (use a list of commands instead)"),
]


def shell_problems(command: str) -> list[str]:
    """Why `command` would not run the same under bash, cmd and PowerShell; empty if it would."""
    stripped = DVC_INTERPOLATION.sub("X", command.strip())
    return [why for pattern, why in SHELL_SPECIFIC if pattern.search(stripped)]


def stage_commands(dvc_yaml: dict) -> list[tuple[str, str]]:
    """(stage name, command) for every command of every stage, `foreach`/`matrix` templates included."""
    commands = []
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        body = stage.get("do", stage)  # foreach stages keep their command under `do`
        cmd = body.get("cmd")
        assert cmd is not None, f"dvc.yaml: stage {name} has no cmd"
        for command in [cmd] if isinstance(cmd, str) else cmd:
            commands.append((name, command))
    return commands


def test_every_stage_command_runs_under_cmd_and_powershell():
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    commands = stage_commands(dvc_yaml)
    assert commands, "dvc.yaml has no stage commands"
    problems = {f"{name}: {command}": shell_problems(command) for name, command in commands}
    assert not {k: v for k, v in problems.items() if v}
    for name, command in commands:
        assert command.split()[0] == "python", f"dvc.yaml: stage {name} should start with `python`: {command}"


@pytest.mark.parametrize(
    "command",
    [
        "python stages/train.py && python stages/evaluate.py",
        "python stages/train.py | tee log.txt",
        "export CUBLAS_WORKSPACE_CONFIG=:4096:8; python stages/train.py",
        "CUDA_VISIBLE_DEVICES=0 python stages/train.py",
        "python stages/train.py --out $OUT",
        "python stages\\train.py",
        "python stages/train.py \\\n  --params params.yaml",
        "./stages/train.py",
        "python3 stages/train.py",
        "python stages/train.py --name 'quick run'",
        "python stages/train.py > log.txt 2>&1",
        "python stages/convert.py data/*.json",
        "python stages/train.py --out ~/runs",
        "python stages/train.py --out %TEMP%",
    ],
)
def test_shell_specific_commands_are_caught(command):
    assert shell_problems(command), command


def test_the_checker_reads_a_bad_dvc_yaml(tmp_path):
    bad = {
        "stages": {
            "good": {"cmd": "python stages/generate.py --params params.yaml --out ${paths.raw}"},
            "bad": {"cmd": ["python stages/a.py", "python stages/b.py && echo done"]},
        }
    }
    commands = stage_commands(bad)
    assert [name for name, command in commands if shell_problems(command)] == ["bad"]
    assert shell_problems(commands[0][1]) == []  # DVC's ${...} is resolved before the shell


def test_torch_compile_is_a_param_and_off_by_default():
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert params["train"]["compile"] is False


def test_attention_is_sdpa_only():
    """No FlashAttention / xformers import anywhere in the package; the model's attention calls SDPA."""
    sources = {path: path.read_text(encoding="utf-8") for path in (REPO / "hrm").rglob("*.py")}
    banned = re.compile(r"^\s*(import|from)\s+(flash_attn|xformers|apex)\b", re.MULTILINE)
    assert not [path for path, text in sources.items() if banned.search(text)]
    assert "scaled_dot_product_attention(" in (REPO / "hrm" / "models" / "layers.py").read_text(
        encoding="utf-8"
    )
