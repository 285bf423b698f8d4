"""Text from data reads as itself in both renderers: never markup, never invisible."""

from __future__ import annotations

import html
import re

import pytest

from ledger.reports import Document, to_html, to_markdown, visible

HOSTILE = [
    "Carrier <script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "Back`tick` & `code`",
    "*bold* and _em_ and __strong__",
    "[link](https://evil.example) ![img](x)",
    "$x^2$ {{x}} ~~gone~~ a|b \\ back",
    "# heading",
    "- item",
    "1. item",
    "<!-- comment -->",
    "&amp; already",
]

_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def shown(markdown: str) -> str:
    """What a Markdown renderer shows for escaped inline text: backslash escapes and character
    references resolved (the text holds no markup left to interpret)."""
    return html.unescape(_ESCAPE.sub(r"\1", markdown))


def markdown_lines(doc: Document) -> list[str]:
    return to_markdown(doc).splitlines()


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_cells_from_data_read_as_the_text_not_markup(text: str) -> None:
    doc = Document("T")
    doc.table(["recipient", "n"], [[text, 1]])
    row = markdown_lines(doc)[4]
    assert row.startswith("| ") and row.endswith(" | 1 |")
    cell = row[2 : -len(" | 1 |")]
    assert shown(cell) == text
    # No markup left: no raw HTML, and every Markdown punctuation character escaped.
    assert "<" not in cell and ">" not in cell  # (quotes make no markup without a tag)
    for char in "`*[]{}|$~":
        assert re.search(r"(?<!\\)" + re.escape(char), cell) is None, (char, cell)
    assert re.search(r"(?<![\\A-Za-z0-9])_", cell) is None


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_paragraphs_and_headings_from_data_read_as_the_text(text: str) -> None:
    doc = Document("T")
    doc.heading(text)
    doc.para(text.replace("`", "'"))  # (backquotes in a paragraph are its code spans)
    heading, para = markdown_lines(doc)[2], markdown_lines(doc)[4]
    assert heading.startswith("## ") and shown(heading[3:]) == text
    assert shown(para) == text.replace("`", "'")
    for line in (heading[3:], para):
        assert "<" not in line
        assert not re.match(r"\s*([#+-]|\d+[.)])", line), line  # not a heading or list


def test_markdown_stays_readable_for_ordinary_words_and_keeps_code_spans() -> None:
    doc = Document("T")
    doc.table(["a", "b"], [["DPD", ["name", "postal_address"]], ["x|y", None]])
    doc.para("run `export verify` on <their> copy")
    lines = markdown_lines(doc)
    assert lines[4:6] == ["| DPD | name, postal_address |", "| x\\|y | - |"]
    assert lines[7] == "run `export verify` on &lt;their&gt; copy"


def test_invisible_and_bidi_format_characters_are_shown_in_both_renderers() -> None:
    doc = Document("T")
    doc.table(["recipient"], [["Royal\u202eliaM"], ["Offspring\u200b"], ["Offspring"]])
    doc.para("to Royal\u202eliaM")
    page = to_html(doc)
    assert "\u202e" not in page and "\u200b" not in page
    assert "<td>Royal&lt;U+202E&gt;liaM</td>" in page
    assert "<td>Offspring&lt;U+200B&gt;</td>" in page and "<td>Offspring</td>" in page
    assert "<p>to Royal&lt;U+202E&gt;liaM</p>" in page
    text = to_markdown(doc)
    assert "\u202e" not in text and "\u200b" not in text
    assert "| Royal&lt;U+202E&gt;liaM |" in text and "| Offspring&lt;U+200B&gt; |" in text
    assert visible("a\nb\u2028c") == "a<U+000A>b<U+2028>c" and visible("Zoë") == "Zoë"


def test_right_to_left_names_are_isolated_in_html() -> None:
    doc = Document("T")
    doc.table(["recipient", "n"], [["\u05d3\u05d5\u05d0\u05e8 (IL)", 2], ["DPD", 1]])
    page = to_html(doc)
    assert "<td><bdi>\u05d3\u05d5\u05d0\u05e8 (IL)</bdi></td>" in page
    assert "<td>DPD</td>" in page
