"""The one exception type for user mistakes, and how it is shown.

Every error a user can cause with a spec is a :class:`SpecError` that knows its
file, line and column.  Rendered, it reads like a compiler message::

    specs/drsae.energy:12:20: unknown name 'lamda' (did you mean 'lam'?)
      sparse : lamda * l1(z)
               ^~~~~

Internal bugs are not ``SpecError`` and stay ordinary tracebacks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class Span(BaseModel):
    """Where a node stands in its source: 1-based line and column, end exclusive."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    line: int
    column: int
    end_line: int
    end_column: int


# Where a mistake in the spec as a whole is reported (no data, no latent, an empty
# file): line 1, column 1, with no source excerpt.
WHOLE_SPEC = Span(line=1, column=1, end_line=1, end_column=1)


class UserError(Exception):
    """Any mistake of the user's: a spec, a flag, a data file, a run directory.

    The CLI prints ``str(error)`` (or ``render()``) and exits 2; never a traceback.
    """

    def render(self) -> str:
        return str(self)


class RunError(UserError):
    """A run directory that is missing, incomplete or from another spec."""


class NumericalError(RunError):
    """The energy or a parameter stopped being finite; the run stops before saving it."""


class InferenceCapWarning(UserWarning):
    """Inference stopped at its step cap before its tolerance on part of a batch: the codes are
    short of the optimum.  ``model.infer`` warns once per call; training records the share
    of capped samples per epoch instead (``infer.capped`` in ``metrics.jsonl``)."""


class _Located:
    """A message about a place in a spec: ``path:line:col: message``, rendered with the
    source line and a caret under the culprit (what :class:`SpecError` and
    :class:`SpecWarning` share)."""

    prefix = ""  # written between the location and the message

    def _locate(self, message: str, span: Span | None, path: str, source: str, hint: str | None) -> None:
        self.message = message
        self.span = span
        self.path = path
        self.source = source
        self.hint = hint

    def located(self, path: str, source: str):
        """Attach the file this message belongs to (kept if already set)."""
        if self.path == "<spec>":
            self.path = path
        if not self.source:
            self.source = source
        return self

    @property
    def location(self) -> str:
        if self.span is None:
            return self.path
        return f"{self.path}:{self.span.line}:{self.span.column}"

    def __str__(self) -> str:
        text = f"{self.location}: {self.prefix}{self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def render(self) -> str:
        """The message, the offending source line and a caret under the culprit."""
        lines = [str(self)]
        if self.span is None or self.span == WHOLE_SPEC or not self.source:
            return lines[0]
        source_lines = self.source.split("\n")  # as lark counts lines: not at form feeds or U+2028
        if not 1 <= self.span.line <= len(source_lines):
            return lines[0]
        text = source_lines[self.span.line - 1].expandtabs(1)
        start = self.span.column - 1
        if self.span.end_line == self.span.line:
            width = max(1, self.span.end_column - self.span.column)
        else:
            width = max(1, len(text) - start)
        lines.append("  " + text)
        lines.append("  " + " " * start + "^" + "~" * (width - 1))
        return "\n".join(lines)


class SpecError(_Located, UserError):
    """A mistake in a spec (or in what the user passed for it).

    ``str(error)`` is the one-line ``path:line:col: message``; :meth:`render`
    adds the source line and a caret under the culprit.
    """

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        path: str = "<spec>",
        source: str = "",
        hint: str | None = None,
    ):
        super().__init__(message)
        self._locate(message, span, path, source, hint)

    __str__ = _Located.__str__


class SpecWarning(_Located):
    """Something in a spec that compiles but is probably not what its author meant
    (``path:line:col: warning: message``).  The compiler collects them in
    ``Program.warnings``; ``energydsl check`` and ``run`` print them on stderr and go on."""

    prefix = "warning: "

    def __init__(self, message: str, span: Span | None = None, *, path: str = "<spec>", source: str = "",
                 hint: str | None = None):  # fmt: skip
        self._locate(message, span, path, source, hint)

    def __repr__(self) -> str:
        return f"SpecWarning({str(self)!r})"


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` for the closest choice, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def one_of(choices: Iterable[str]) -> str:
    """``expected one of: a, b, c`` for a hint."""
    return "expected one of: " + ", ".join(sorted(set(choices)))
