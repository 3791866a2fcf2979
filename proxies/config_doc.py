"""The config reference, generated from the schema (proxies/config.py): every key with its
type or choices, its default and the comment beside it in the source.

    python -m proxies.config_doc > docs/config.md

tests/test_config.py fails when docs/config.md differs from what this writes.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
from enum import Enum
from typing import Any, Dict, Iterator, List, Tuple, get_type_hints

from proxies import config as C

SECTIONS: Tuple[Tuple[str, type], ...] = (
    ("model", C.ModelConfig), ("optim", C.OptimConfig), ("data", C.DataConfig),
    ("train", C.TrainConfig), ("train.spike", C.SpikeConfig), ("train.monitor", C.MonitorConfig),
    ("wandb", C.WandbConfig),
    ("dynamics", C.DynamicsConfig), ("mesh", C.MeshConfig), ("", C.Config),
    ("sweep", C.SweepConfig))


def field_comments(cls: type) -> Dict[str, str]:
    """Each field's comment: the full-line comments right above it, then the one after it."""
    source = inspect.getsource(cls)
    comments: Dict[int, Tuple[str, bool]] = {}  # line -> (text, whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            whole = not tok.line[:tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), whole)
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        after = comments.get(node.end_lineno, ("", True))
        out[node.target.id] = " ".join(above + ([after[0]] if not after[1] else []))
    return out


def type_text(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return " \\| ".join(f"`{m.value}`" for m in tp)
    name = getattr(tp, "__name__", None)
    return name if name and not getattr(tp, "__args__", None) else str(tp).replace("typing.", "")


def default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        value = f.default
    if isinstance(value, Enum):
        value = value.value
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def rows(prefix: str, cls: type) -> Iterator[Tuple[str, str, str, str]]:
    hints = get_type_hints(cls)
    notes = field_comments(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            continue  # a section of its own
        key = f"{prefix}.{f.name}" if prefix else f.name
        yield key, type_text(hints[f.name]), default_text(f), notes.get(f.name, "")


def render() -> str:
    lines: List[str] = [
        "# Config reference",
        "",
        "Generated from `proxies/config.py` by `python -m proxies.config_doc > docs/config.md`;",
        "edit the schema's comments, not this file. Any key is set on the command line",
        "(`optim.lr=1e-2`) or in a YAML file under `proxies/configs/`; an unknown key or an",
        "impossible value stops the run at start-up with one line naming the fix.",
    ]
    for prefix, cls in SECTIONS:
        doc = inspect.getdoc(cls) or ""
        lines += ["", f"## `{prefix}`" if prefix else "## top level", ""]
        if doc and not doc.startswith(cls.__name__):  # not the signature dataclass writes
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, tp, default, note in rows(prefix, cls):
            note = note.replace("|", "\\|")  # a bar inside a Markdown table cell
            lines.append(f"| `{key}` | {tp} | {default} | {note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
