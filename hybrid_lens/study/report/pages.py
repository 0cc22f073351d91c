"""The report's pages: its sections rendered as Markdown (`report.md`) and as one self-contained HTML
page (`report.html`)."""

from __future__ import annotations

import html
import re

import plotly.io as pio

from .wording import Fragment, Section


def markdown(sections: list[Section], figures: dict[str, str] | None) -> str:
    """The report as Markdown; `figures`: figure id -> PNG path relative to the report (None: PNGs
    were not written, which the report says in one line). A `Fragment` becomes a link to its file.

    Examples:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"condition": ["baseline"], "x baseline": ["1"]})
        >>> print(markdown([Section("t2", "Table 2", "How to read.", [("m", "Measured on: 8 windows", table, None)])], {}))
        # Component-ablation study
        <BLANKLINE>
        Contents: [Table 2](#t2)
        <BLANKLINE>
        ## Table 2
        <BLANKLINE>
        *How to read this:* How to read.
        <BLANKLINE>
        ### m
        <BLANKLINE>
        Measured on: 8 windows
        <BLANKLINE>
        | condition   |   x baseline |
        |:------------|-------------:|
        | baseline    |            1 |
        <BLANKLINE>
    """
    out = ["# Component-ablation study", "",
           "Contents: " + " · ".join(f"[{markdown_text(s.title)}](#{s.key})" for s in sections), ""]
    if figures is None:
        out += ["PNG copies of the figures were not written (`--no-png`); every figure is in report.html.", ""]
    figures = figures or {}
    for section in sections:
        out += [f"## {markdown_text(section.title)}", "", f"*How to read this:* {markdown_text(section.read)}", ""]
        for i, (heading, setting, table, figure) in enumerate(section.parts):
            out += [f"### {markdown_text(heading)}", ""]
            if setting:
                out += [markdown_text(setting), ""]
            if table is not None:
                cells = table.map(markdown_text).rename(columns=markdown_text)
                out += [cells.to_markdown(index=False), ""]
            if isinstance(figure, Fragment):
                out += [f"An HTML view, inlined in report.html: [{markdown_text(figure.path)}]({figure.path})", ""]
            elif figure is not None and figure_id(section, i) in figures:
                out += [f"![{markdown_text(heading)}]({figures[figure_id(section, i)]})", ""]
    return "\n".join(out)


def markdown_text(text) -> str:
    """`text` (a heading, setting or table cell, often from data: condition and model names,
    labels) as literal Markdown: one line; `&`, `<`, `>` as HTML entities; Markdown's own
    characters backslash-escaped (an underscore inside a word is literal already).

    Examples:
        >>> print(markdown_text("<script>x</script> [a](javascript:b) **c** | attn_off_early"))
        &lt;script&gt;x&lt;/script&gt; \\[a\\](javascript:b) \\*\\*c\\*\\* \\| attn_off_early
    """
    text = re.sub(r"\s*[\r\n]+\s*", " ", str(text))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"([\\`*\[\]|#~])", r"\\\1", text)
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h2 { border-bottom: 2px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.read { background: #f4f7fb; border-left: 4px solid #4a78b0; padding: .4em .8em; }
.setting { color: #555; font-size: .9em; }
.wide { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
nav { line-height: 1.8; }
nav a { margin-right: 1em; white-space: nowrap; }
"""


def html_page(sections: list[Section]) -> str:
    """The report as one self-contained HTML page (plotly's JS inlined once; no network needed). Tables
    and `Fragment`s sit in boxes that scroll sideways when wider than the page, so the page never does.

    Examples:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"condition": ["baseline"], "x baseline": ["1"]})
        >>> page = html_page([Section("t2", "Table 2", "How to read.", [("m", "Measured on: 8 windows", table, None)])])
        >>> "<h2 id='t2'>Table 2</h2>" in page and "cdn.plot.ly" not in page
        True
    """
    body = ["<h1>hybrid-lens component-ablation study</h1>",
            "<nav>" + " ".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in sections) + "</nav>"]
    first_figure = True
    for section in sections:
        body += [f"<h2 id='{section.key}'>{html.escape(section.title)}</h2>",
                 f"<p class='read'><b>How to read this:</b> {html.escape(section.read)}</p>"]
        for i, (heading, setting, table, figure) in enumerate(section.parts):
            body.append(f"<h3>{html.escape(heading)}</h3>")
            if setting:
                body.append(f"<p class='setting'>{html.escape(setting)}</p>")
            if table is not None:
                body.append(f"<div class='wide'>{table.to_html(index=False, escape=True, border=0)}</div>")
            if isinstance(figure, Fragment):
                body.append(f"<div class='wide'>{figure.html}</div>")
            elif figure is not None:
                body.append(pio.to_html(figure, full_html=False, include_plotlyjs="inline" if first_figure else False,
                                        div_id=figure_id(section, i), config={"responsive": True}))
                first_figure = False
    return ("<!doctype html><html><head><meta charset='utf-8'><title>hybrid-lens study</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>")


def figure_id(section: Section, index: int) -> str:
    """A readable, file-safe id of the figure of `section.parts[index]` (its HTML div id and PNG name).

    Examples:
        >>> figure_id(Section("table2", "Table 2", "How to read.", [("hybrid-lens/tiny-qwen2.5", "", None, None)]), 0)
        'table2_hybrid-lens_tiny-qwen2.5'
    """
    return f"{section.key}_" + re.sub(r"[^A-Za-z0-9.-]+", "_", section.parts[index][0]).strip("_")
