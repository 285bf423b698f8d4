"""The auditor's report and the records of processing (GDPR Art. 30), as documents.

Both are built from the read models' figures (`ReadModels.figures`) into a small document of
headings, paragraphs, tables and charts, rendered as Markdown or as one self-contained HTML
file: styles inline, charts drawn by matplotlib (imported only when a report is made, so
other commands stay fast) and embedded as SVG data; nothing is fetched from the internet.
"""

from __future__ import annotations

import base64
import html
import io
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.feed import iso
from ledger.vocabulary import (
    DATA_CATEGORIES,
    DISCLOSURES,
    LAWFUL_BASES,
    PURPOSE_CHANNELS,
    RECIPIENT_KINDS,
    RULES,
)

# -- a document: headings, paragraphs, tables, charts ------------------------------------------


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def table(self, columns: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (columns, rows)))

    def chart(self, svg: str, caption: str) -> None:
        self.blocks.append(("chart", (svg, caption)))


def to_markdown(doc: Document) -> str:
    """The document as Markdown. Every text from data (cells, headings, paragraphs outside their
    `code` spans) is escaped so that a wiki or pandoc shows it exactly as it was, never as
    markup: HTML-escaped (`&`, `<`, `>`, quotes) and Markdown punctuation backslash-escaped."""
    out = [f"# {_md(doc.title)}", ""]
    for kind, value in doc.blocks:
        if kind == "heading":
            level, text = value
            out += ["#" * level + " " + _md(text), ""]
        elif kind == "para":
            out += [_md_para(value), ""]
        elif kind == "table" and not value[1]:
            out += ["(none)", ""]
        elif kind == "table":
            columns, rows = value
            out.append("| " + " | ".join(_md(c, cell=True) for c in columns) + " |")
            out.append("|" + "|".join("---" for _ in columns) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("")
        elif kind == "chart":
            out += [f"*{_md(value[1])}* (chart in the HTML rendering)", ""]
    return "\n".join(out)


# Characters that show nothing or reorder what follows (format characters such as U+202E
# RIGHT-TO-LEFT OVERRIDE or U+200B ZERO WIDTH SPACE, controls, line separators): shown as
# <U+XXXX>, so that "Royal\u202eliaM" cannot pass for "RoyalMail".
_INVISIBLE = {"Cf", "Cc", "Zl", "Zp"}


def visible(text: str) -> str:
    """`text` with every invisible or bidi format character written as `<U+XXXX>`."""
    if text.isprintable():  # (the usual case: isprintable is false for Cf, Cc, Zl, Zp)
        return text
    return "".join(
        f"<U+{ord(ch):04X}>" if unicodedata.category(ch) in _INVISIBLE else ch for ch in text
    )


# Markdown punctuation that is markup anywhere in a line (CommonMark, GFM tables and
# strikethrough, pandoc's $math$, templates' {{ }}); `_` only where it can open or close
# emphasis (not inside a word: postal_address stays as it is).
_MD_ANYWHERE = re.compile(r"([\\`*\[\]{}|~$])|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# ... and what is markup at the start of a line (headings, lists, quotes, rules).
_MD_LINE_START = re.compile(r"^(\s*)([#+=-]|\d+[.)])")


def _md(text: str, *, cell: bool = False) -> str:
    """Data as Markdown text that renders as exactly this text."""
    escaped = html.escape(visible(text), quote=True)
    escaped = _MD_ANYWHERE.sub(lambda m: "\\" + m.group(0), escaped)
    if cell:
        return escaped
    return _MD_LINE_START.sub(
        lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], escaped
    )


def _md_cell(value: Any) -> str:
    return _md(_cell(value), cell=True) if value is not None else "-"


def _md_para(text: str) -> str:
    """A paragraph: its `code` spans are kept (their text is shown literally), the rest is
    escaped; an unpaired backquote is escaped with the rest."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        return _md(text)
    return "".join(f"`{visible(p)}`" if i % 2 else _md(p, cell=i > 0) for i, p in enumerate(parts))


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:72em;color:#1b1f24;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #1b1f24}h2{margin-top:1.8em;border-bottom:1px solid #ccd}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #ccd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}
details summary{cursor:pointer;font-weight:600;margin:.4em 0}
"""


def esc(text: str) -> str:
    """Text as HTML, its invisible characters shown (`visible`)."""
    return html.escape(visible(text))


def _isolated(text: str) -> str:
    """A data cell's text as HTML; isolated in <bdi> if it holds right-to-left letters, so
    that they cannot reorder the text around them."""
    escaped = esc(text)
    if any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text):
        return f"<bdi>{escaped}</bdi>"
    return escaped


def to_html(doc: Document) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(doc.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(doc.title)}</h1>",
    ]
    for kind, value in doc.blocks:
        if kind == "heading":
            level, text = value
            out.append(f"<h{level}>{esc(text)}</h{level}>")
        elif kind == "para":
            out.append(f"<p>{_code_spans(esc(value))}</p>")
        elif kind == "table" and not value[1]:
            out.append("<p><em>None.</em></p>")
        elif kind == "table":
            columns, rows = value
            out.append("<table><thead><tr>")
            out += [f"<th>{esc(c)}</th>" for c in columns]
            out.append("</tr></thead><tbody>")
            for row in rows:
                cells = (
                    f'<td class="n">{c}</td>'
                    if isinstance(c, int)
                    else f"<td>{_isolated(_cell(c))}</td>"
                    for c in row
                )
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        elif kind == "chart":
            svg, caption = value
            data = base64.b64encode(svg.encode()).decode()
            out.append(
                f'<figure><img alt="{esc(caption)}" src="data:image/svg+xml;base64,{data}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out)


def _code_spans(escaped: str) -> str:
    """Markdown's `code` spans of a paragraph (already escaped) as HTML <code>."""
    parts = escaped.split("`")
    if len(parts) % 2 == 0:  # an unpaired backquote: leave the text as it is
        return escaped
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


# -- charts ------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Charts are reproducible (no date in the SVG, fixed ids) and their text is real text, which
# a screen reader or a search finds; legend and tick text of 9 pt.
_RC: Any = {
    "svg.fonttype": "none",
    "svg.hashsalt": "consent-ledger",
    "font.size": 9,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}

# A fixed colour per recipient kind, the same in every report whatever kinds have data
# (Okabe and Ito's palette, safe for colour-blind readers), and a hatch each so that colour
# is not the only cue. A kind outside the vocabulary is grey.
KIND_STYLE: dict[str, tuple[str, str]] = {
    "carrier": ("#0072B2", ""),
    "card_issuer": ("#E69F00", "//"),
    "identity_verification": ("#009E73", ".."),
    "credit_reference_agency": ("#CC79A7", "xx"),
    "affiliate": ("#D55E00", "\\\\"),
    "acquirer": ("#56B4E9", "++"),
}
_OTHER_KIND = ("#999999", "--")
# Channels by marker (and colour); given solid, withdrawn dashed.
CHANNEL_STYLE: dict[str, tuple[str, str]] = {
    "email": ("#0072B2", "o"),
    "post": ("#D55E00", "s"),
    "web": ("#009E73", "^"),
}
_OTHER_CHANNEL = ("#999999", "D")
STATUS_STYLE = {"given": "-", "withdrawn": "--"}


def all_months(*by_month: list[Any]) -> list[str]:
    """Every month (YYYY-MM) from the first to the last month of any of the series (each row's
    first field is its month): months without data are there too, so that gaps show."""
    seen = sorted({row[0] for rows in by_month for row in rows})
    if not seen:
        return []
    year, month = map(int, seen[0].split("-"))
    months = []
    while (label := f"{year:04d}-{month:02d}") <= seen[-1]:
        months.append(label)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#555")
    ax.set_xticks([])
    ax.set_yticks([])


def _counts_axis(ax: Any, label: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.set_ylim(bottom=0)
    ax.set_ylabel(label)


def consent_chart(
    by_month: list[tuple[str, str, str, str, int]], months: list[str] | None = None
) -> str:
    """Consent given and withdrawn per month, one panel per purpose, a line per channel and
    status, over `months` (default: every month from the first to the last with data)."""
    import matplotlib

    plt = _pyplot()
    months = all_months(by_month) if months is None else months
    series: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for month, purpose, channel, status, count in by_month:
        series[(purpose, channel, status)][month] = count
    purposes = list(PURPOSE_CHANNELS)
    with matplotlib.rc_context(_RC):
        fig, axes = plt.subplots(len(purposes), 1, figsize=(10, 2.4 * len(purposes)), sharex=True)
        for ax, purpose in zip(axes, purposes, strict=True):
            ax.set_title(purpose, fontsize=10, loc="left")
            if not months:
                _no_data(ax)
                continue
            for channel in sorted(PURPOSE_CHANNELS[purpose]):
                colour, marker = CHANNEL_STYLE.get(channel, _OTHER_CHANNEL)
                for status, style in STATUS_STYLE.items():
                    values = series.get((purpose, channel, status), {})
                    ax.plot(
                        range(len(months)),
                        [values.get(m, 0) for m in months],
                        style,
                        color=colour,
                        marker=marker,
                        markersize=4,
                        label=f"{channel} {status}",
                    )
            _counts_axis(ax, "facts")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        if months:
            _month_axis(axes[-1], months)
        return _svg(fig)


def disclosure_chart(by_month: list[tuple[str, str, int]], months: list[str] | None = None) -> str:
    """Disclosures per recipient kind per month, stacked, over `months` (default: every month
    from the first to the last with data)."""
    import matplotlib

    plt = _pyplot()
    months = all_months(by_month) if months is None else months
    counts = {(m, k): n for m, k, n in by_month}
    kinds = sorted(RECIPIENT_KINDS | {k for _, k, _ in by_month})
    with matplotlib.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(10, 3.6))
        if not any(counts.values()) or not months:
            _no_data(ax)
            return _svg(fig)
        bottom = [0] * len(months)
        for kind in kinds:
            values = [counts.get((m, kind), 0) for m in months]
            if any(values):
                colour, hatch = KIND_STYLE.get(kind, _OTHER_KIND)
                ax.bar(
                    range(len(months)),
                    values,
                    bottom=bottom,
                    label=kind,
                    color=colour,
                    hatch=hatch,
                    edgecolor="white",
                    linewidth=0.5,
                )
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        _counts_axis(ax, "disclosures")
        # (the legend from the top of the stack down, as the bars read)
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0
        )
        _month_axis(ax, months)
        return _svg(fig)


def _month_axis(ax: Any, months: list[str]) -> None:
    """Months at their places (one tick per month, labelled at most about 24 times)."""
    step = max(1, -(-len(months) // 24))
    ax.set_xlim(-0.6, len(months) - 0.4)
    ax.set_xticks(range(0, len(months), step))
    ax.set_xticklabels(months[::step], rotation=45, ha="right")


# -- the auditor's report ----------------------------------------------------------------------


def auditor_report(
    figures: Any, generated_at: datetime, exports: list[dict[str, Any]] | None = None
) -> Document:
    doc = Document("consent-ledger: auditor's report")
    violations = figures.violations
    registry = with_exports(figures.recipients, exports or [])
    by_rule = Counter(v.rule for v in violations)
    months = all_months(figures.consent_by_month, figures.disclosures_by_month)
    doc.para(
        f"Generated {iso(generated_at)} from the ledger's read models at event {figures.head}. "
        "Rules are judged in business time against everything recorded (late facts included)."
    )
    doc.heading("Headline figures")
    doc.table(
        ["figure", "value"],
        [
            ["facts recorded", figures.facts],
            ["events in the log", figures.head],
            ["customers", figures.customers],
            ["customers erased", figures.erased_customers],
            ["orders", sum(n for _, n in figures.orders_by_status)],
            ["disclosures of personal data", figures.disclosures],
            ["recipients (by name and kind)", len(registry)],
            ["violations", len(violations)],
        ],
    )
    doc.heading("Violations by rule")
    doc.table(["rule", "violations"], [[rule, by_rule.get(rule, 0)] for rule in _rules(by_rule)])
    types = figures.violation_fact_types
    for rule in _rules(by_rule):
        found = [v for v in violations if v.rule == rule]
        if not found:
            continue
        doc.heading(f"{rule} ({len(found)})", 3)
        doc.table(
            ["at", "customer", "fact_id", "fact type"],
            [[iso(v.at), v.customer, v.fact_id, types.get(v.fact_id)] for v in found],
        )
    doc.heading("Consent over time")
    doc.chart(
        consent_chart(figures.consent_by_month, months),
        "Consent given (solid) and withdrawn (dashed) per month, per purpose and channel "
        "(business time of the facts).",
    )
    doc.table(
        ["purpose", "channel", "status now", "customers"],
        [list(row) for row in figures.consent_now],
    )
    doc.heading("Disclosures over time")
    doc.chart(
        disclosure_chart(figures.disclosures_by_month, months),
        "Disclosures of personal data per recipient kind per month (business time).",
    )
    doc.heading("Orders")
    doc.table(["status", "orders"], [list(row) for row in figures.orders_by_status])
    doc.heading("Recipient registry")
    _registry_table(doc, registry)
    doc.heading("Due-diligence exports")
    doc.para(
        "Each export to a prospective acquirer is a disclosure recorded in the ledger, with the "
        "SHA-256 of its manifest: `export verify` on the acquirer's copy proves what they got."
    )
    doc.table(
        ["at", "acquirer", "identified", "customers", "categories", "basis", "manifest sha256"],
        [
            [
                e["at"],
                e["recipient"],
                "yes" if e["identified"] else "pseudonymous",
                e["customers"],
                e["categories"],
                e["basis"],
                e["manifest_sha256"],
            ]
            for e in exports or []
        ],
    )
    return doc


def _rules(by_rule: Counter[str]) -> list[str]:
    return list(RULES) + sorted(set(by_rule) - set(RULES))


def with_exports(
    recipients: list[dict[str, Any]], exports: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The recipient registry (`projections.recipient_registry.registry`) with the
    due-diligence exports (`ledger.exports.recorded_exports`) in it, as the disclosures to an
    acquirer they are: each row gains `exports`, how many exports its recipient received,
    and its first and last times, categories, purposes and bases cover them. An acquirer
    that received exports only gets a row of its own, with no disclosures on customers'
    trails (`disclosures` and `customers` count those). By kind, then name."""
    rows = {(r["recipient_kind"], r["recipient"]): {**r, "exports": 0} for r in recipients}
    for export in exports:
        key = (export["recipient_kind"], export["recipient"])
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "recipient": export["recipient"],
                "recipient_kind": export["recipient_kind"],
                "disclosures": 0,
                "customers": 0,
                "first_at": export["at"],
                "last_at": export["at"],
                "categories": [],
                "purposes": [],
                "bases": [],
                "exports": 0,
            }
        row["exports"] += 1
        at = datetime.fromisoformat(export["at"])
        if at < datetime.fromisoformat(row["first_at"]):
            row["first_at"] = export["at"]
        if at > datetime.fromisoformat(row["last_at"]):
            row["last_at"] = export["at"]
        for name, values in (
            ("categories", export["categories"]),
            ("purposes", [export["purpose"]]),
            ("bases", [export["basis"]]),
        ):
            row[name] = sorted({*row[name], *values})
    return [rows[key] for key in sorted(rows)]


def _registry_table(doc: Document, recipients: list[dict[str, Any]]) -> None:
    doc.table(
        [
            "recipient",
            "kind",
            "disclosures",
            "customers",
            "exports",
            "first",
            "last",
            "categories",
            "bases",
        ],
        [
            [
                r["recipient"],
                r["recipient_kind"],
                r["disclosures"],
                r["customers"],
                r["exports"],
                r["first_at"][:10],
                r["last_at"][:10],
                r["categories"],
                r["bases"],
            ]
            for r in recipients
        ],
    )


# -- records of processing (GDPR Art. 30) -----------------------------------------------------


def processing_records(
    figures: Any, generated_at: datetime, exports: list[dict[str, Any]] | None = None
) -> Document:
    doc = Document("Records of processing activities (GDPR Art. 30)")
    registry = with_exports(figures.recipients, exports or [])
    doc.para(
        f"Derived {iso(generated_at)} from the ledger's vocabulary and from what it recorded "
        f"(event {figures.head}): every purpose, category, recipient and basis below is either "
        "declared in the vocabulary or was seen in a recorded fact, with counts."
    )
    doc.heading("Data subjects")
    doc.table(
        ["category", "recorded", "erased"],
        [["customers of the online shop", figures.customers, figures.erased_customers]],
    )
    doc.heading("Purposes based on consent (opt-in per channel)")
    given: dict[tuple[str, str], int] = {
        (p, c): n for p, c, status, n in figures.consent_now if status == "given"
    }
    withdrawn: dict[tuple[str, str], int] = {
        (p, c): n for p, c, status, n in figures.consent_now if status == "withdrawn"
    }
    doc.table(
        ["purpose", "channel", "basis", "consent given now", "withdrawn now"],
        [
            [
                purpose,
                channel,
                "consent",
                given.get((purpose, channel), 0),
                withdrawn.get((purpose, channel), 0),
            ]
            for purpose, channels in PURPOSE_CHANNELS.items()
            for channel in sorted(channels)
        ],
    )
    doc.heading("Purposes of disclosure to third parties")
    recorded = {(d["purpose"], d["recipient_kind"]): d for d in figures.disclosure_purposes}
    rows = []
    for fact_type, rule in DISCLOSURES.items():
        seen = recorded.get((rule.purpose, rule.recipient_kind))
        categories = list(rule.categories) if rule.categories else "as listed on each fact"
        rows.append(
            [
                rule.purpose,
                rule.basis,
                rule.recipient_kind,
                categories,
                seen["categories"] if seen else [],
                seen["disclosures"] if seen else 0,
                fact_type,
            ]
        )
    doc.table(
        [
            "purpose",
            "lawful basis",
            "recipient kind",
            "categories (declared)",
            "categories (recorded)",
            "disclosures",
            "fact",
        ],
        rows,
    )
    doc.heading("Categories of personal data")
    uses: dict[str, set[str]] = defaultdict(set)
    for d in figures.disclosure_purposes:
        for category in d["categories"]:
            uses[category].add(d["purpose"])
    for rule in DISCLOSURES.values():
        for category in rule.categories or ():
            uses[category].add(rule.purpose)
    doc.table(
        ["category", "disclosed for"],
        [[c, sorted(uses.get(c, set()))] for c in sorted(DATA_CATEGORIES | set(uses))],
    )
    doc.heading("Recipients by kind")
    per_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in registry:
        per_kind[r["recipient_kind"]].append(r)
    doc.table(
        ["recipient kind", "recipients", "disclosures", "exports"],
        [
            [
                kind,
                len(per_kind.get(kind, [])),
                sum(r["disclosures"] for r in per_kind.get(kind, [])),
                sum(r["exports"] for r in per_kind.get(kind, [])),
            ]
            for kind in sorted(RECIPIENT_KINDS | set(per_kind))
        ],
    )
    doc.heading("Recipients by name")
    _registry_table(doc, registry)
    doc.heading("Lawful bases")
    bases: dict[str, set[str]] = defaultdict(set)
    for rule in DISCLOSURES.values():
        bases[rule.basis].add(rule.purpose)
    for purpose in PURPOSE_CHANNELS:
        bases["consent"].add(purpose)
    doc.table(
        ["basis", "purposes relying on it"],
        [[b, sorted(bases.get(b, set())) or "none recorded"] for b in sorted(LAWFUL_BASES)],
    )
    doc.heading("Transfers (sale or merger of the business)")
    acquirers = [r for r in registry if r["recipient_kind"] == "acquirer"]
    names = sorted(set(figures.initiations) | {r["recipient"] for r in acquirers})
    disclosed = {r["recipient"]: r for r in acquirers}
    doc.table(
        [
            "acquirer",
            "transfer initiated",
            "disclosures",
            "customers",
            "due-diligence exports",
            "categories",
        ],
        [
            [
                name,
                figures.initiations.get(name, []) or "never",
                disclosed[name]["disclosures"] if name in disclosed else 0,
                disclosed[name]["customers"] if name in disclosed else 0,
                disclosed[name]["exports"] if name in disclosed else 0,
                disclosed[name]["categories"] if name in disclosed else [],
            ]
            for name in names
        ],
    )
    doc.heading("Technical and organisational measures")
    doc.para(
        "Names, emails, phones and addresses are encrypted under a key per customer; erasure "
        "destroys the key. Every fact is recorded once, immutably, and the ledger verifies that "
        "none was altered, removed, inserted or reordered."
    )
    return doc
