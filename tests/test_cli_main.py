"""The CLI's top level turns expected failures into a message and an exit code."""

import pytest

from qkdpost import cli
from qkdpost.cli import warmup as warmup_cmd
from qkdpost.errors import InputError


@pytest.mark.parametrize(
    "exc, code",
    [
        (PermissionError(13, "Permission denied", "/keys"), 1),
        (InputError("--out: cannot create"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_errors_become_messages_not_tracebacks(monkeypatch, capsys, exc, code):
    def boom(args):
        raise exc

    monkeypatch.setattr(warmup_cmd, "run", boom)
    assert cli.main(["warmup"]) == code
    err = capsys.readouterr().err
    assert err.startswith("qkdpost warmup:") and "Traceback" not in err


def test_unexpected_errors_still_raise(monkeypatch):
    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(warmup_cmd, "run", boom)
    with pytest.raises(RuntimeError):
        cli.main(["warmup"])
