"""Terminal colours as escaped HTML: SGR rendered, everything else text or dropped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from remoteci.pages import ansi
from remoteci.pages import render as pages
from remoteci.pages.ansi import Style


def html(text: str) -> str:
    out = ansi.render(text)
    return out.html + out.last_line


class Tags(HTMLParser):
    """Every tag and attribute of a fragment, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text += data


def parsed(fragment: str) -> Tags:
    tags = Tags()
    tags.feed(fragment)
    tags.close()
    return tags


def test_basic_and_bright_colours_become_classes() -> None:
    assert html("\x1b[32mPASSED\x1b[0m ok") == '<span class="f2">PASSED</span> ok'
    assert html("\x1b[91;44mX") == '<span class="f9 g4">X</span>'
    assert html("\x1b[1;3;4;2;9mX") == '<span class="b d i u s">X</span>'


def test_256_and_truecolour_map_to_the_palette() -> None:
    assert html("\x1b[38;5;208mX") == '<span class="f208">X</span>'
    assert html("\x1b[48:5:17mX") == '<span class="g17">X</span>'
    assert html("\x1b[38;2;255;0;0mX") == '<span class="f196">X</span>'
    assert html("\x1b[38:2::0:0:255mX") == '<span class="f21">X</span>'
    assert html("\x1b[38;2;128;128;128mX") == '<span class="f244">X</span>'  # a grey, not the cube
    assert ansi.nearest_index(0, 0, 0) == 16 and ansi.nearest_index(255, 255, 255) == 231


def test_resets_turn_off_what_they_name() -> None:
    assert html("\x1b[1;31mA\x1b[39mB\x1b[22mC\x1b[mD") == (
        '<span class="f1 b">A</span><span class="b">B</span>CD')
    style = ansi.apply_sgr(Style(), "1;4;31;42")
    assert ansi.apply_sgr(style, "39;49;22;24") == Style()
    assert ansi.apply_sgr(style, "4:0").underline is False
    assert ansi.apply_sgr(style, "") == Style()


def test_broken_sgr_parameters_are_ignored_not_fatal() -> None:
    for raw in ("38;5", "38;2;1", "38;5;999", "99999999999", "38:9", ";;;", "48;2;300;-1;5"):
        ansi.apply_sgr(Style(), raw)  # no exception
    assert ansi.apply_sgr(Style(), "38;5;999;1") == Style(bold=True)


def test_other_escape_sequences_and_controls_are_dropped() -> None:
    text = ("a\x1b[2Kb\x1b[?25lc\x1b]0;title\x07d\x1b]8;;http://x\x1b\\e\x1b(Bf\x1b7g\x07h\x08i"
            "\x00j\x9bk\x1bPdcs\x1b\\l\x1b")
    assert html(text) == "abcdefghijkl"


def test_a_private_csi_ending_in_m_is_no_sgr() -> None:
    assert html("\x1b[31m\x1b[?0mred") == '<span class="f1">red</span>'


def test_carriage_returns_keep_the_last_state_of_each_line() -> None:
    assert html("10%\r20%\r\x1b[32m100%\x1b[0m\ndone\r\n") == '<span class="f2">100%</span>\ndone\n'
    assert html("50%\r\nnext") == "50%\nnext"  # CR LF ends the line as it was


def test_the_last_open_line_and_the_final_style_are_reported() -> None:
    out = ansi.render("one\n\x1b[1;38;5;99mtwo")
    assert out.html == "one\n" and out.last_line == '<span class="f99 b">two</span>'
    assert out.style == Style(fg=99, bold=True) and out.style.sgr() == "1;38;5;99"
    assert ansi.apply_sgr(Style(), out.style.sgr()) == out.style


HOSTILE = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "</pre><b>x</b>",
    "\x1b[31m</span><a href=javascript:alert(1)>x</a>", '"><svg onload=alert(1)>',
    "\x1b[31;\"><script>m", "\x1b[38;5;1\"onmouseover=alert(1)//m<i>", "&lt;already&gt; & <",
    "\x1b]8;;javascript:alert(1)\x07link\x1b]8;;\x07", "\x1b[<script>m", "\ufeff\u202e<b>",
    "\x1b[31m<\x1b[0m" + "script>", "<!--", "<![CDATA[x]]>", "\x1b[>1;2m<x>",
]


def test_no_byte_sequence_becomes_markup() -> None:
    for text in HOSTILE:
        fragment = html(text)
        tags = parsed(fragment)
        assert {tag for tag, _ in tags.tags} <= {"span"}, (text, fragment)
        for _, attrs in tags.tags:
            assert [name for name, _ in attrs] == ["class"], (text, fragment)
            assert re.fullmatch(r"[a-z0-9 ]+", attrs[0][1] or ""), (text, fragment)
        assert "<" not in fragment.replace("<span class=", "").replace("</span>", "")


def test_every_single_byte_and_escape_prefix_stays_text() -> None:
    for byte in range(256):
        for text in (bytes([byte]).decode("latin-1"), "\x1b" + chr(byte), "\x1b[" + chr(byte) + "m<"):
            fragment = html(text)
            assert {t for t, _ in parsed(fragment).tags} <= {"span"}, repr(text)


def test_an_unfinished_sequence_at_the_end_of_a_growing_log_waits() -> None:
    assert ansi.unfinished_suffix("ok\x1b[38;5") == 6
    assert ansi.unfinished_suffix("ok\x1b") == 1
    assert ansi.unfinished_suffix("ok\x1b]0;title") == 9
    assert ansi.unfinished_suffix("ok\x1b]0;title\x1b") == 10
    assert ansi.unfinished_suffix("50%\r") == 1
    assert ansi.unfinished_suffix("ok\x1b[32m") == 0
    assert ansi.unfinished_suffix("ok\x1b]0;" + "x" * ansi.HOLD_MAX) == 0  # no endless wait


def test_the_job_page_log_resumes_after_what_it_rendered() -> None:
    data = "é\n\x1b[32mgreen \x1b[1".encode()
    rendered, offset = pages.log_view(data, 0, active=True)
    assert data[offset:] == b"\x1b[1" and rendered.last_line == '<span class="f2">green </span>'
    assert rendered.style.sgr() == "38;5;2"
    cut = "ok ü".encode()[:-1]  # the ü is half written
    _, offset = pages.log_view(cut, 0, active=True)
    assert offset == len(cut) - 1
    finished, end = pages.log_view(data, 0, active=False)
    assert end == len(data) and finished.html == "é\n"


def test_a_tail_cut_from_the_middle_starts_at_a_whole_line() -> None:
    rendered, offset = pages.log_view(b"8;5;1mhalf\nwhole\n", 1000, active=False)
    assert rendered.html == "whole\n" and offset == 1000 + 17
