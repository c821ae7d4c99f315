"""Markdown rendering for Matrix: safe HTML, only the spec's tags, no formatted body for plain text."""

import pytest

from bot.content.markdown import ALLOWED_TAGS, render_markdown, sanitize_html
from bot.content.text import edit_content, text_content


@pytest.mark.parametrize("text", ["hello", "a & b", "line one\nline two", "5 < 6 > 4", "   spaced   ", ""])
def test_plain_text_gives_no_html(text):
    assert render_markdown(text) is None


def test_raw_html_is_escaped_not_passed_through():
    html = render_markdown("**hi** <script>alert('x')</script> <b onclick=x>b</b>")
    assert html is not None
    assert "<script" not in html and "<b " not in html
    assert "&lt;script&gt;" in html and "&lt;b onclick=x&gt;" in html
    assert html.startswith("<p><strong>hi</strong>")
    # a raw HTML block too
    block = render_markdown("<div>\n<script>x()</script>\n</div>\n\n*x*")
    assert "<script" not in block and "<div" not in block and "&lt;script&gt;" in block


def test_script_alone_is_plain_text():
    # escaped, it is just text: the body says it all
    assert render_markdown("<script>alert(1)</script>") is None


def test_lists():
    assert render_markdown("- a\n- b") == "<ul>\n<li>a</li>\n<li>b</li>\n</ul>"
    assert render_markdown("3. x\n4. y") == '<ol start="3">\n<li>x</li>\n<li>y</li>\n</ol>'
    # sane_lists: a new list type starts a new list
    assert render_markdown("1. a\n\n* b").count("<ol>") == 1


def test_code_blocks_keep_language_and_escape_content():
    html = render_markdown('```python\nif a < b: print("<x>")\n```')
    assert html == '<pre><code class="language-python">if a &lt; b: print("&lt;x&gt;")\n</code></pre>'
    assert render_markdown("`<i>`") == "<p><code>&lt;i&gt;</code></p>"


def test_links_only_with_safe_schemes():
    assert render_markdown("[m](https://matrix.org)") == '<p><a href="https://matrix.org">m</a></p>'
    assert render_markdown("<https://x.org/a?b=1&c=2>") == (
        '<p><a href="https://x.org/a?b=1&amp;c=2">https://x.org/a?b=1&amp;c=2</a></p>'
    )
    bad = render_markdown("[click](javascript:alert(1)) and **b**")
    assert "href" not in bad and "click" in bad
    # images only from the content repository; others become their alt text
    assert render_markdown("![cat](https://x/cat.png) **b**") == "<p>cat <strong>b</strong></p>"
    assert '<img alt="cat" src="mxc://x/y" />' in render_markdown("![cat](mxc://x/y)")


def test_tables_and_headings_and_line_breaks():
    table = render_markdown("| a | b |\n|:--|--:|\n| 1 | 2 |")
    assert "<table>" in table and "<th>a</th>" in table and "<td>2</td>" in table
    assert "style" not in table
    assert render_markdown("# Title\n> quote") == "<h1>Title</h1>\n<blockquote>\n<p>quote</p>\n</blockquote>"
    assert render_markdown("**a**\nb") == "<p><strong>a</strong><br />\nb</p>"


def test_sanitizer_reduces_to_the_spec():
    dirty = (
        '<div onclick="x"><script>bad<b>x</b></script><iframe src=x></iframe><a href="JaVaScRiPt:x">t</a>'
        '<code class="language-py evil">c</code><unknown>k</unknown><span data-mx-spoiler="" style="x">s</span>'
        "<!-- c --><p>unclosed"
    )
    assert sanitize_html(dirty) == (
        '<div>t<code class="language-py">c</code>k<span data-mx-spoiler="">s</span><p>unclosed</p></div>'
    )
    assert {"p", "a", "code", "pre", "table", "img"} <= ALLOWED_TAGS and "script" not in ALLOWED_TAGS


def test_wired_into_content_builders():
    c = text_content("**hi**", markdown=True)
    assert c["body"] == "**hi**"
    assert c["format"] == "org.matrix.custom.html"
    assert c["formatted_body"] == "<p><strong>hi</strong></p>"
    assert "formatted_body" not in text_content("plain", markdown=True)
    assert text_content("**hi**", markdown=True, html="<i>mine</i>")["formatted_body"] == "<i>mine</i>"
    assert "formatted_body" not in text_content("**hi**")
    e = edit_content("$e", "*new*", markdown=True)
    assert e["m.new_content"]["formatted_body"] == "<p><em>new</em></p>"
    assert e["formatted_body"] == "* <p><em>new</em></p>"
    assert e["body"] == "* *new*"
