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


def test_sanitizer_parses_hostile_html_like_a_browser():
    # HTML5 lets a link nest in a link through a table cell; the inner, unsafe one is unwrapped, the outer kept
    nested = '<a href="https://x"><table><tr><td><a href="javascript:y">in</a></td></tr></table>out</a>'
    assert sanitize_html(nested) == '<a href="https://x"><table><tbody><tr><td>in</td></tr></tbody></table>out</a>'
    # scripts hidden behind entities, relative and protocol-relative links, links into the media repo: no link
    links = '<a href="jav&#x09;ascript:x">t</a><a href="/r">r</a><a href="//evil.example/x">p</a>'
    assert sanitize_html(links) == "trp"
    assert sanitize_html('<a href="mxc://s/m">m</a>') == "m"
    assert sanitize_html('<a href="MAILTO:a@b">m</a>') == '<a href="MAILTO:a@b">m</a>'
    # no attributes beyond the spec's per-tag list (not even lang/title/dir), restricted values checked
    assert sanitize_html('<p lang="en" title="t" dir="rtl" style="x">x</p>') == "<p>x</p>"
    assert sanitize_html('<a href="https://x" target="_top">t</a>') == '<a href="https://x">t</a>'
    assert sanitize_html('<a href="https://x" target="_blank">t</a>') == '<a href="https://x" target="_blank">t</a>'
    assert sanitize_html('<ol start="x"><li>a</li></ol>') == "<ol><li>a</li></ol>"
    # a valueless spoiler attribute is still a spoiler
    assert sanitize_html("<span data-mx-spoiler>s</span>") == '<span data-mx-spoiler="">s</span>'
    # images: alt text stays text when the image goes; attribute values stay escaped when it stays
    assert sanitize_html('<img src="https://x/y.png" alt="a &lt;b&gt; &amp; c">') == "a &lt;b&gt; &amp; c"
    kept = sanitize_html('<img src="mxc://s/m" alt="q&quot;<>" width=10 onerror=x>')
    # (newer Ammonia also writes < and > in attribute values as entities; both are the same attribute value)
    assert kept.replace("&lt;", "<").replace("&gt;", ">") == '<img src="mxc://s/m" alt="q&quot;<>" width="10" />'
    assert sanitize_html("<hr><br>x") == "<hr /><br />x"
