"""pytest plugin `liveprism` (entry point `pytest11`): policy scenarios as pytest tests.

Installing `liveprism` is all a policy repository needs: pytest then
- collects every `*.feature` file under its test paths (no Python test module needed), each
  scenario and each Examples row of an outline becoming one test;
- provides the step vocabulary of `engine.gitops.bdd.steps` (pytest-bdd);
- resolves paths in scenarios against the rootdir (the repository), and reads the policy from
  `policies/` there unless the ini option `liveprism_policy` or a `Given the policy in` says otherwise.
`liveprism_collect_features = false` turns the collection off (for a repository that binds its
features with `pytest_bdd.scenarios()` itself).
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import scenarios

from engine.gitops.bdd.world import ScenarioFailure

pytest_plugins = ["engine.gitops.bdd.steps"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("liveprism_policy", "Policy directory of the scenarios, relative to the rootdir.", default="policies")
    parser.addini(
        "liveprism_collect_features", "Collect *.feature files as tests (liveprism plugin).", type="bool", default=True
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".feature" or not parent.config.getini("liveprism_collect_features"):
        return None
    collector: pytest.Collector = FeatureFile.from_parent(parent, path=file_path)
    return collector


class FeatureFile(pytest.Module):
    """A `.feature` file collected as a module whose tests are its scenarios."""

    def _getobj(self) -> Any:
        module = types.ModuleType(f"liveprism_feature_{self.path.stem}")
        module.__file__ = str(self.path)
        # pytest-bdd binds scenarios into the namespace it is called from: run the call in the module's.
        code = compile("scenarios(_path, features_base_dir=_base)", str(self.path), "exec")
        namespace = module.__dict__
        namespace.update(scenarios=scenarios, _path=str(self.path), _base=str(self.path.parent))
        exec(code, namespace)
        for helper in ("scenarios", "_path", "_base"):
            del namespace[helper]
        return module


def pytest_bdd_step_error(
    request: pytest.FixtureRequest, feature: Any, scenario: Any, step: Any, step_func: Any,
    step_func_args: Any, exception: Exception,
) -> None:
    """Remember which step failed, for the short report below."""
    if isinstance(exception, ScenarioFailure):
        where = os.path.relpath(feature.filename, request.config.rootpath)
        exception.step = f"{step.keyword} {step.name}  ({where}:{step.line_number})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing `Then` reports the step and the verdict trace, not a Python traceback."""
    report = yield
    if report.failed and call.excinfo is not None and isinstance(call.excinfo.value, ScenarioFailure):
        failure = call.excinfo.value
        step = f"failed step: {failure.step}\n" if failure.step else ""
        report.longrepr = f"{step}{failure}"
    return report
