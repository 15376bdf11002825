"""SMTP AUTH users files (engine/policy/users.py) and `liveprism users hash`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli.main import app
from engine.policy.users import hash_password, parse_users, read_users, verify_password


def test_hash_is_salted_argon2id_and_verifies_only_its_password() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("$argon2id$") and first != second  # salted
    assert verify_password(first, "correct horse") and verify_password(second, "correct horse")
    assert not verify_password(first, "Correct horse")
    assert not verify_password("correct horse", "correct horse")  # a plaintext "hash" never matches


def test_parse_keeps_argon2_lines_and_reports_every_other_line_by_number() -> None:
    good = hash_password("pw")
    text = (f"# comment\n\nalice:{good}\nbob:plaintext-password\n:{good}\nno-colon-here\n"
            f"carol:$6$salt$cryptsha512\nalice:{good}\n  dave : {good}  \n")
    users = parse_users(text)
    assert users.users == {"alice": good, "dave": good}
    assert [line for line, _ in users.problems] == [4, 5, 6, 7, 8]
    assert "plaintext-password" not in " ".join(message for _, message in users.problems)
    assert "twice" in users.problems[-1][1]


def test_read_from_a_path_relative_to_the_policy_dir_or_an_env_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = hash_password("pw")
    (tmp_path / "users").write_text(f"alice:{good}\n")
    found = read_users("users", tmp_path)
    assert not isinstance(found, str) and found.users == {"alice": good}
    monkeypatch.setenv("LP_USERS", f"bob:{good}\n")
    found = read_users("env:LP_USERS", tmp_path)
    assert not isinstance(found, str) and found.users == {"bob": good}
    assert read_users("env:LP_NOT_SET", tmp_path) == "environment variable LP_NOT_SET is not set"
    missing = read_users("nope", tmp_path)
    assert isinstance(missing, str) and missing.startswith("cannot read users file")


def test_users_hash_command_prints_a_hash_of_stdin_and_never_the_password() -> None:
    result = CliRunner().invoke(app, ["users", "hash"], input="s3cret pass\n")
    assert result.exit_code == 0, result.output
    printed = result.output.strip()
    assert "s3cret" not in printed and verify_password(printed, "s3cret pass")
    assert parse_users(f"alice:{printed}\n").users == {"alice": printed}
    empty = CliRunner().invoke(app, ["users", "hash"], input="\n")
    assert empty.exit_code == 2
