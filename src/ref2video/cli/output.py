"""What every command prints with: consoles that never wrap, JSON documents, and failures.

Rich wraps text at the console's width, which is 80 columns in a pipe: a signed URL or an id
cut in two is useless to a script. These consoles never insert a line break of their own.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["out", "err", "piped", "emit_json", "fail", "one_line"]

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def piped() -> bool:
    """True when stdout is not a terminal: print lines for scripts, not tables for people."""
    return not sys.stdout.isatty()


def emit_json(document: Any) -> None:
    """One JSON document on one line of stdout; nothing else goes there under --json."""
    print(json.dumps(document), flush=True)


def one_line(value: object) -> str:
    """`value` as text that stays on one line (a message can hold line breaks or tabs)."""
    return " ".join(str(value).split())


def fail(message: str, code: int, *, as_json: bool = False, document: dict[str, Any] | None = None) -> NoReturn:
    """One line on stderr, under --json also `document` (default {"code", "message"}) on stdout,
    and exit `code`. The message is printed as it is: ids and URLs are not Rich markup."""
    err.print(Text.assemble(("error:", "red"), " ", message))
    if as_json:
        emit_json(document if document is not None else {"code": "Error", "message": message})
    raise typer.Exit(code)
