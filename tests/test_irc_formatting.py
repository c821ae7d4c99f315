"""The IRC bridge's formatting (plugins/irc_bridge/formatting.py): Matrix HTML to IRC control codes and back, mentions
in formatted lines, splitting into lines that fit the relayed 512 bytes. Pure: no network."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.plugin.loader import import_plugin

formatting = __import__(import_plugin("irc_bridge").__module__ + ".formatting", fromlist=["html_to_irc"])
html_to_irc = formatting.html_to_irc
irc_line_budget = formatting.irc_line_budget
irc_to_html = formatting.irc_to_html
link_irc_mentions = formatting.link_irc_mentions
render_remote_lines = formatting.render_remote_lines
split_irc_text = formatting.split_irc_text
strip_irc_formatting = formatting.strip_irc_formatting

B, IT, U, S, M, C, R = "\x02", "\x1d", "\x1f", "\x1e", "\x11", "\x03", "\x0f"

# ------------------------------------------------------------------------------------------- Matrix HTML -> IRC


def test_html_to_irc_styles_pills_links_lists_and_quotes():
    assert html_to_irc("plain &amp; simple") == "plain & simple"
    assert html_to_irc("a <strong>bold</strong> <em>it</em> <u>u</u> <del>s</del> <code>c</code>") == (
        f"a {B}bold{B} {IT}it{IT} {U}u{U} {S}s{S} {M}c{M}"
    )
    assert html_to_irc("<b>x <i>y</i></b>") == f"{B}x {IT}y{B}{IT}"
    assert html_to_irc('<font data-mx-color="#ff0000">red</font>1 after') == f"{C}04red{R}1 after"
    assert html_to_irc('<a href="https://matrix.to/#/@bob:example.org">Bob</a>: hi') == "Bob: hi"
    assert html_to_irc('see <a href="https://example.org/x">the docs</a>') == "see the docs (https://example.org/x)"
    assert html_to_irc('<a href="https://example.org">https://example.org</a>') == "https://example.org"
    assert html_to_irc("<p>one</p><p>two</p>") == "one\ntwo"
    assert html_to_irc("a<br>b<br/>c") == "a\nb\nc"
    assert html_to_irc("<ul><li>x</li><li>y</li></ul><ol start=\"3\"><li>z</li></ol>") == "• x\n• y\n3. z"
    assert html_to_irc("<blockquote><p>quoted</p></blockquote><p>answer</p>") == "> quoted\nanswer"
    assert html_to_irc("<pre><code>def f():\n    pass\n</code></pre>") == "def f():\n    pass"
    assert html_to_irc("<h1>Title</h1>text") == f"{B}Title{B}\ntext"
    # a rich reply's quoted original is dropped
    assert html_to_irc("<mx-reply><blockquote>old</blockquote></mx-reply>new") == "new"


def test_irc_to_html_and_strip():
    assert irc_to_html("no codes here") is None
    assert irc_to_html(f"a {B}b{B} {IT}i{R} {U}u") == "a <strong>b</strong> <em>i</em> <u>u</u>"
    assert irc_to_html(f"{C}04,02red{C} x <y>") == (
        '<font data-mx-color="#ff0000" data-mx-bg-color="#00007f">red</font> x &lt;y&gt;'
    )
    assert irc_to_html(f"{S}gone{S} {M}mono") == "<del>gone</del> <code>mono</code>"
    assert strip_irc_formatting(f"{B}a{B} {C}12,3b{R} {C}c\x04ff0000d") == "a b cd"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_irc_round_trip_keeps_the_text(text):
    html = irc_to_html(text)
    plain = strip_irc_formatting(text)
    if html is not None:
        assert strip_irc_formatting(html_to_irc(html)).replace("\n", " ").split() == plain.split()


# ------------------------------------------------------------------------------------------- splitting


def test_split_irc_text_carries_formatting_over_and_drops_empty_lines():
    lines = split_irc_text(f"{B}bold words that go on\n\n  \nnext line", 12)
    assert lines[0].startswith(B) and lines[1].startswith(B)  # bold re-opened on the continued piece
    assert lines[-1] == "next line"
    assert all(len(line.encode()) <= 12 for line in lines)
    assert strip_irc_formatting(" ".join(lines[:-1])).split() == ["bold", "words", "that", "go", "on"]


def test_irc_line_budget_counts_the_relayed_prefix():
    exact = irc_line_budget("relay", "#chan", user="relay", host="127.0.0.1")
    assert exact == 512 - len(":relay!relay@127.0.0.1 PRIVMSG #chan :\r\n")
    assert irc_line_budget("relay", "#chan") < exact  # unknown host: the longest usual one is assumed


def test_render_remote_lines_prefixes_every_line_and_fits():
    words = " ".join(f"w{i}" for i in range(200))
    lines = render_remote_lines("<{name}> {text}", "Alice", words, 100)
    assert len(lines) > 5 and all(line.startswith("<Alice> ") for line in lines)
    assert all(len(line.encode()) <= 100 for line in lines)
    assert " ".join(line.removeprefix("<Alice> ") for line in lines).split() == words.split()
    cut = render_remote_lines("<{name}> {text}", "Alice", words, 100, max_lines=3)
    assert len(cut) == 3 and cut[-1].startswith("<Alice> … (") and "more lines not relayed" in cut[-1]
    bold = render_remote_lines("<{name}> {text} ~", "A", f"{B}open", 100)
    assert bold == [f"<A> {B}open{B} ~"]  # formatting closed before the template's tail


# ------------------------------------------------------------------------------------------- mentions


def test_link_irc_mentions_converts_formatting_and_pills_clear_mentions():
    members = {"@alice:x": "Alice Liddell", "@bob:x": "Bob", "@bot:x": "Bot"}
    html, ids = link_irc_mentions("Alice Liddell: hi, ask @bob", members, exclude={"@bot:x"})
    assert ids == ["@alice:x", "@bob:x"]
    assert html == (
        '<a href="https://matrix.to/#/@alice:x">Alice Liddell</a>: hi, ask <a href="https://matrix.to/#/@bob:x">Bob</a>'
    )
    assert link_irc_mentions("I saw Bob yesterday", members) == (None, [])
    assert link_irc_mentions(f"{B}plain{B} words", members) == ("<strong>plain</strong> words", [])
    html, ids = link_irc_mentions(f"{B}bob{B}: styled", members)
    assert ids == [] and html == "<strong>bob</strong>: styled"  # a mention inside formatting is left alone
    html, ids = link_irc_mentions(f"hey @bob, {U}look{U}", members)
    assert ids == ["@bob:x"] and html == 'hey <a href="https://matrix.to/#/@bob:x">Bob</a>, <u>look</u>'
