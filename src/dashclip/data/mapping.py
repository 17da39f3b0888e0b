"""The column mapping of an import: the source (a file, or a preset by name) resolved to its table, mapping and
images dir, and the mapping checked against the table's columns (linear in the header's width)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..clihelp import UserError
from .catalog import CORE_COLUMNS
from .report import COLUMN, Report
from .rows import Mapping, Table, _did_you_mean
from .tables import read_table


class MissingColumnError(UserError):
    """A column the mapping requires is not in the file."""



def resolve_source(source, mapping, preset, fmt, encoding):
    """-> (table, mapping, images_dir, preset name or None, extra images)."""
    from .presets import PRESETS, get_preset

    source_path = Path(source) if source is not None else None
    if preset is None and source is not None and str(source) in PRESETS and not source_path.is_file():
        preset = str(source)
    if preset is not None:
        p = get_preset(preset).load()
        if mapping is not None:  # keys given by the user override the preset's
            base = p.mapping.to_dict()
            base.update(mapping if isinstance(mapping, dict) else mapping.to_dict())
            p.mapping = Mapping.from_dict(base)
        table = p.table if p.table is not None else read_table(p.file, fmt, encoding)
        images_dir = Path(p.mapping.images_dir) if p.mapping.images_dir else Path(table.file).parent
        return table, p.mapping, images_dir, preset, p.extra_images
    if source is None:
        raise UserError("give a source file or a preset name")
    if not source_path.is_file():
        raise FileNotFoundError(f"{source}: no such file, and not a preset name "
                                f"(presets: {', '.join(sorted(PRESETS))})")
    # A copy: the column check below adjusts it, and the caller's object stays as it was.
    mapping = Mapping.from_dict(mapping.to_dict() if isinstance(mapping, Mapping) else (mapping or {}))
    table = read_table(source_path, fmt, encoding)
    images_dir = Path(mapping.images_dir) if mapping.images_dir else source_path.parent
    if mapping.images_dir and not images_dir.is_absolute() and not images_dir.exists():
        images_dir = source_path.parent / mapping.images_dir  # relative to the input file
    return table, mapping, images_dir, None, []


def check_columns(table: Table, mapping: Mapping, report: Report) -> Mapping:
    """Required columns must exist (else MissingColumnError); a missing optional one is reported and ignored."""
    required = {"id": mapping.id, "title": mapping.title}
    if mapping.image:
        required["image"] = mapping.image
    for col in mapping.pattern_columns():
        required[f"image_pattern {mapping.image_pattern!r}"] = col
    times = Counter(table.columns)   # linear: a header may have 200,000 columns
    have = list(times)               # the distinct names, in header order
    for col in sorted(c for c, n in times.items() if n > 1):
        report.add("duplicate_column", COLUMN, table.file, None, repr(col),
                   f"column {col!r} appears {times[col]} times in the header; the first one is used")
    for role, col in required.items():
        if col not in times:
            shown = ", ".join(have[:30]) + (f", ... ({len(have):,} columns in all)" if len(have) > 30 else "")
            raise MissingColumnError(
                f"{table.file}: required column {col!r} (role {role}) not found{_did_you_mean(col, have)}. "
                f"The file has columns: {shown or '(none)'}. "
                f"Map the right one with --{role.split()[0].replace('_', '-')} COLUMN or a mapping file.")
    for label in ("category",):
        col = getattr(mapping, label)
        if col and col not in times:
            report.add("unknown_column", COLUMN, table.file, None, label,
                       f"mapping names column {col!r} which is not in the file{_did_you_mean(col, have)}; "
                       f"ignored")
            mapping.category = None
    for key in ("text", "attrs"):
        kept = []
        for col in getattr(mapping, key):
            if col in times:
                kept.append(col)
            else:
                report.add("unknown_column", COLUMN, table.file, None, key,
                           f"mapping names column {col!r} which is not in the file{_did_you_mean(col, have)}; "
                           f"ignored")
        setattr(mapping, key, kept)
    clash = [c for c in mapping.attrs if c in CORE_COLUMNS]
    if clash:
        raise UserError(f"{table.file}: attribute column(s) {clash} have the name of a catalog column "
                        f"({', '.join(CORE_COLUMNS)}); rename them in the input")
    return mapping
