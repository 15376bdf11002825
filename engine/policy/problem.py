"""`Problem`: one finding about a policy, located at a 1-based FILE:LINE:COL, and its one rendering.

Contract: every command that prints problems renders them with `Problem.format`, so the text and
GitHub forms exist in one place:
- text: `FILE:LINE:COL: SEVERITY: MESSAGE` (DESIGN.md `validate`);
- github: `::SEVERITY file=FILE,line=LINE,col=COL::MESSAGE`, escaped as GitHub Actions workflow
  commands require (`%`, CR, LF in the message; also `:` and `,` in the file).
FILE is the path relative to the policy directory, or, given the directory, `directory/FILE`
shown relative to the current directory when it lies below it (`display_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]
ProblemFormat = Literal["text", "github"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of `load_policy` / `validate_policy`, located at a 1-based FILE:LINE:COL."""

    severity: Severity
    file: str
    line: int
    col: int
    message: str

    def format(self, style: ProblemFormat = "text", directory: Path | None = None) -> str:
        """The problem as one line in `style`; FILE is `display_path(directory, file)` when a directory is given."""
        file = self.file if directory is None else display_path(directory, self.file)
        if style == "github":
            return (
                f"::{self.severity} file={_escape_property(file)},line={self.line},col={self.col}"
                f"::{_escape_data(self.message)}"
            )
        return f"{file}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def format_text(self) -> str:
        """`FILE:LINE:COL: SEVERITY: MESSAGE`, with FILE relative to the policy directory."""
        return self.format("text")

    def sort_key(self) -> tuple[str, int, int, str, str]:
        """Order by file, line, col (then severity and message, for determinism)."""
        return (self.file, self.line, self.col, self.severity, self.message)


def display_path(directory: Path, rel: str) -> str:
    """`directory/rel`, relative to the current directory when it lies below it."""
    path = directory / rel
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return path.as_posix()


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")
