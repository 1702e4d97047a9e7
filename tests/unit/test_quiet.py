"""Quiet verbs, fast --help: no third-party chatter on stderr, no heavy library imported to print
help, and the project's own warnings still shown. Each check runs in a fresh interpreter: what
is imported and which filters are installed are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from recstack.settings import REPO_ROOT

HEAVY = ("apache_beam", "feast", "mlflow")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-c", textwrap.dedent(code)], **env)


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "PYTHONWARNINGS")}
    # This checkout's packages, whichever one the interpreter has installed.
    base["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), base.get("PYTHONPATH", "")])
    return subprocess.run(argv, cwd=REPO_ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=300)


def _recstack() -> list[str]:
    script = Path(sys.executable).with_name("recstack")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def test_help_prints_no_third_party_warning() -> None:
    done = _run([*_recstack(), "--help"])
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert "apitools" not in done.stderr
    assert not [line for line in done.stderr.splitlines() if "Warning" in line], done.stderr


def test_help_of_every_verb_imports_no_beam_feast_or_mlflow() -> None:
    done = _python(f"""
        import json, sys
        from typer.main import get_command
        from app.cli import app, main

        def paths(cmd, prefix):  # every command and group, as the words that name it
            yield prefix
            for name, sub in getattr(cmd, "commands", dict()).items():
                yield from paths(sub, [*prefix, name])

        helped, failed = [], []
        for path in list(paths(get_command(app), [])):
            sys.argv = ["recstack", *path, "--help"]
            try:
                main()
            except SystemExit as exc:
                (helped if exc.code in (0, None) else failed).append(" ".join(path))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print("RESULT " + json.dumps({{"helped": helped, "failed": failed, "heavy": heavy}}))
    """)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    assert not result["failed"]
    assert {"", "train", "pipeline", "models", "lake", "experiment"} <= set(result["helped"])
    assert result["heavy"] == [], result["heavy"][:10]
    assert "apitools" not in done.stderr and "Warning" not in done.stderr


def test_project_warnings_still_show() -> None:
    done = _python("""
        import warnings
        from recstack.logs import quiet_third_party

        quiet_third_party()
        quiet_third_party()  # idempotent
        def warn_from(module, message, category):
            exec(f"import warnings; warnings.warn({message!r}, {category.__name__})",
                 {"__name__": module})

        warn_from("recstack.something", "project user warning", UserWarning)
        warn_from("recstack.something", "project future warning", FutureWarning)
        warn_from("training.ranker", "stage future warning", FutureWarning)
        warn_from("dask.dataframe.dask_expr._shuffle", "dask future warning", FutureWarning)
        warn_from("mlflow.types.utils", "Hint: Inferred schema contains integer column(s).",
                  UserWarning)
        warn_from("mlflow.types.utils", "another mlflow warning", UserWarning)
    """)
    assert done.returncode == 0, done.stderr
    for shown in ("project user warning", "project future warning", "stage future warning",
                  "another mlflow warning"):
        assert shown in done.stderr
    assert "dask future warning" not in done.stderr
    assert "Inferred schema" not in done.stderr


def test_quieting_twice_installs_each_filter_once() -> None:
    done = _python("""
        import logging, warnings
        from recstack.logs import quiet_third_party

        quiet_third_party()
        once = (len(warnings.filters), len(logging.getLogger().filters),
                len(logging.getLogger("mlflow.pyfunc").filters))
        quiet_third_party()
        twice = (len(warnings.filters), len(logging.getLogger().filters),
                 len(logging.getLogger("mlflow.pyfunc").filters))
        assert once == twice, (once, twice)
    """)
    assert done.returncode == 0, done.stderr


def test_importing_the_logs_module_changes_nothing() -> None:
    done = _python("""
        import logging, os, warnings
        before = (list(warnings.filters), list(logging.getLogger().filters))
        import recstack.logs
        assert (list(warnings.filters), list(logging.getLogger().filters)) == before
        assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    """)
    assert done.returncode == 0, done.stderr


def test_beams_apitools_line_is_lowered_to_debug() -> None:
    code = """
        import logging, sys
        from recstack.logs import quiet_third_party

        logging.basicConfig(level=sys.argv[1], stream=sys.stderr)
        quiet_third_party()
        import apache_beam.io.gcp.internal.clients.bigquery  # noqa: F401
    """
    quiet = _run([sys.executable, "-c", textwrap.dedent(code), "INFO"])
    assert quiet.returncode == 0, quiet.stderr
    assert "apitools" not in quiet.stderr
    debug = _run([sys.executable, "-c", textwrap.dedent(code), "DEBUG"])
    assert "DEBUG:root:apitools not found" in debug.stderr


def test_mlflow_progress_bars_hints_and_pickle_warning_are_quiet() -> None:
    done = _python("""
        import logging
        import pandas as pd
        from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
        from mlflow.types.utils import _infer_schema
        from recstack.logs import quiet_third_party

        quiet_third_party()
        assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
        _infer_schema(pd.DataFrame({"clicks": [1, 2]}))  # MLflow's integer-column hint
        pyfunc = logging.getLogger("mlflow.pyfunc")  # where MLflow logs the pickle warning
        for msg in ("Passing a Python object as `python_model` causes it to be serialized",
                    "another pyfunc warning"):
            pyfunc.handle(pyfunc.makeRecord("mlflow.pyfunc", logging.WARNING,
                                            "/x/mlflow/pyfunc/__init__.py", 1, msg, (), None))
    """)
    assert done.returncode == 0, done.stderr
    assert "Inferred schema" not in done.stderr
    assert "python_model" not in done.stderr
    assert "another pyfunc warning" in done.stderr


def test_an_explicit_progress_bar_setting_wins() -> None:
    done = _python("""
        import os
        from recstack.logs import quiet_third_party

        quiet_third_party()
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
    """, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="true")
    assert done.returncode == 0, done.stderr
