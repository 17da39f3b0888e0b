"""The import report: every problem found, by file, row and field, with what it did to the row
(`DROPPED`, `KEPT`, `COLUMN`); written as report.json and report.md into the catalog dir."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

REPORT_ROWS = 20  # examples kept per problem in the report
DROPPED, KEPT, COLUMN = "dropped", "kept", "column"  # what a problem did to its row


@dataclass
class Problem:
    code: str       # e.g. "duplicate_id", "image_truncated"
    action: str     # DROPPED, KEPT or COLUMN
    file: str
    row: int | None
    field: str | None
    message: str    # the full sentence shown to the user: names the file, the row and the field


@dataclass
class Report:
    source: str
    row_label: str
    rows_read: int = 0
    products: int = 0
    products_with_image: int = 0
    extra_images_read: int = 0
    extra_images: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, code: str, action: str, file: str, row: int | None, field: str | None, what: str,
            row_label: str | None = None) -> Problem:
        where = file if row is None else f"{file} {row_label or self.row_label} {row}"
        message = f"{where}: {what}" if field is None else f"{where}, field {field}: {what}"
        p = Problem(code, action, file, row, field, message)
        self.problems.append(p)
        return p

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.code] = out.get(p.code, 0) + 1
        return dict(sorted(out.items()))

    @property
    def rows_dropped(self) -> int:
        return sum(1 for p in self.problems if p.action == DROPPED and p.file == self.source)

    def by_code(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in sorted(self.problems, key=lambda p: (p.code, p.file, p.row or 0, p.field or "")):
            out.setdefault(p.code, []).append(p)
        return out

    def to_dict(self, first: int = REPORT_ROWS) -> dict:
        groups = self.by_code()
        return {
            "source": self.source,
            "row_numbers": ("line numbers in the file (a CSV's header is line 1)" if self.row_label == "line"
                            else "row numbers, 1 = the first row"),
            "rows_read": self.rows_read,
            "rows_dropped": self.rows_dropped,
            "products": self.products,
            "products_with_image": self.products_with_image,
            "products_without_image": self.products - self.products_with_image,
            "extra_images_read": self.extra_images_read,
            "extra_images": self.extra_images,
            "seconds": round(self.seconds, 3),
            "products_per_second": round(self.products / self.seconds, 1) if self.seconds else None,
            "counts": self.counts(),
            "problems": {code: {"action": ps[0].action, "count": len(ps),
                                "first": [asdict(p) for p in ps[:first]]} for code, ps in groups.items()},
        }

    def to_markdown(self, first: int = REPORT_ROWS) -> str:
        d = self.to_dict(first)
        lines = [f"# Import report: {self.source}", "",
                 f"- rows read: {d['rows_read']} ({d['row_numbers']})",
                 f"- products imported: {d['products']} ({d['products_with_image']} with an image, "
                 f"{d['products_without_image']} without)",
                 f"- rows dropped: {d['rows_dropped']}"]
        if d["extra_images_read"]:
            lines.append(f"- extra images: {d['extra_images']} of {d['extra_images_read']} imported")
        lines.append(f"- time: {d['seconds']} s ({d['products_per_second']} products/s)")
        lines += ["", "| problem | rows | what happened |", "|---|---:|---|"]
        action_text = {DROPPED: "row dropped", KEPT: "row kept (see message)", COLUMN: "column ignored"}
        for code, g in d["problems"].items():
            lines.append(f"| {code} | {g['count']} | {action_text[g['action']]} |")
        if not d["problems"]:
            lines.append("| (none) | 0 | |")
        for code, g in d["problems"].items():
            lines += ["", f"## {code} ({g['count']}, first {len(g['first'])})", ""]
            lines += [f"- {p['message']}" for p in g["first"]]
        return "\n".join(lines) + "\n"
