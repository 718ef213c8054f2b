"""Edits of cfg text that keep every other line as written (comments, order, spacing).

Used by the model (deploy), pruning and the anchors tool; text in, text out, so it sits below
the model and imports nothing but the cfg syntax.
"""
from __future__ import annotations

from .cfg import strip_comment

KeyEdits = dict[str, "str | None"]


def _line_key(line: str) -> str | None:
    """The key of a ``key=value`` cfg line, else None."""
    body = strip_comment(line)
    if not body or body.startswith("[") or "=" not in body:
        return None
    return body.split("=", 1)[0].strip()


def edit_cfg_text(text: str, edits: dict[int, KeyEdits]) -> str:
    """Apply per-section key edits to cfg text, keeping every other line as written.

    ``edits`` maps a section's header line (1-based) to its key edits. Within the section,
    every line setting an edited key is replaced (``key=value``) or, for ``None``, removed;
    a key set but absent is inserted just after the header.
    """
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines, 1) if strip_comment(line).startswith("[")]
    ends = {h: (headers[k + 1] if k + 1 < len(headers) else len(lines) + 1) for k, h in enumerate(headers)}
    out: list[str] = []
    section_edits: KeyEdits = {}
    for number, line in enumerate(lines, 1):
        if number in ends:  # a section header
            section_edits = edits.get(number, {})
            out.append(line)
            section_text = lines[number:ends[number] - 1]
            present = {_line_key(l) for l in section_text}
            out.extend(f"{k}={v}" for k, v in section_edits.items() if v is not None and k not in present)
            continue
        key = _line_key(line)
        if key is not None and key in section_edits:
            value = section_edits[key]
            if value is not None:
                out.append(f"{key}={value}")
            continue
        out.append(line)
    missing = set(edits) - set(ends)
    if missing:
        raise ValueError(f"no section header on line(s) {sorted(missing)}")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")
