"""`wilson-ray --help` / `--version` must not pay for torch, Ray or MLflow: they are imported by the commands
that need them (issue 11 item 6). Checked by what a fresh interpreter has imported, not by a timer."""

import subprocess
import sys

HEAVY = ("torch", "ray", "mlflow", "optuna", "torchvision")


def _imported_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_building_the_parser_imports_no_heavy_library():
    mods = _imported_after("from wilson_ray.cli import build_parser\nbuild_parser()")
    assert mods.isdisjoint(HEAVY), sorted(mods & set(HEAVY))


def test_version_and_help_answer_without_heavy_imports():
    for flag in ("--version", "--help"):
        probe = (
            "import sys, runpy\n"
            f"sys.argv = ['wilson-ray', '{flag}']\n"
            "from wilson_ray.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('HEAVY', ' '.join(m for m in " + repr(HEAVY) + " if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        heavy_line = [line for line in out.splitlines() if line.startswith("HEAVY")][0]
        assert heavy_line.strip() == "HEAVY", heavy_line
        if flag == "--version":
            assert "wilson-ray 0.1.0" in out
        else:
            assert "data" in out and "train" in out and "sweep" in out


def test_every_listed_command_module_exists():
    from wilson_ray import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"data", "train", "eval", "table", "sweep", "best"} <= set(sub.choices)
