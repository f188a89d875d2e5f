"""Terminal output as escaped HTML: ANSI SGR colours become class names, everything else is text.

Test runners colour their output; a log page that shows `\\e[32m` as boxes is worse than one that
shows green. Only SGR (colours, bold, dim, italic, underline, strike, reset) is rendered; every
other escape sequence and control character is dropped, and a carriage return overwrites its
line, so a progress bar shows its last state. Text is escaped and classes come from a fixed set,
so no byte of a log can become markup. Colours are classes, never inline styles: the pages'
Content-Security-Policy allows no style attribute. 256-colour indexes get one class each;
truecolour maps to the nearest of those 256 (the xterm palette), which the eye barely tells apart.

The page's live tail (pages.LIVE_TAIL_JS) applies the same rules in the browser to the bytes it
appends; its tokens are the same regular expression as _TOKEN here.

No library fits: the maintained Python ones (ansi2html, rich) carry their own CSS with inline
styles or pull in a renderer far bigger than this; SGR itself is a short, fixed table (ECMA-48
8.3.117 and the xterm 256/truecolour extensions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from typing import NamedTuple

# One token at a time; the order matters: a CSI must win over the two-byte escape that would
# match its first two characters.
_TOKEN = re.compile(
    r"\x1b\[(?P<csi>[0-?]*)[ -/]*(?P<final>[@-~])"  # CSI: SGR when the final byte is m
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC, DCS, SOS, PM, APC strings: dropped
    r"|\x1b[ -/]*[0-~]"  # any other escape: dropped
    r"|(?P<text>[^\x00-\x08\x0a-\x1f\x7f-\x9f]+)"  # printable text, tabs included
    r"|(?P<nl>\n)|(?P<cr>\r)"
    r"|[\x00-\x1f\x7f-\x9f]"  # other C0/C1 controls and a lone ESC: dropped
)
# A sequence still being written at the end of a growing log: wait for the rest of it.
_UNFINISHED = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|[\]PX^_][^\x07\x1b]*\x1b?|[ -/]*)")
_SGR_PARAMS = re.compile(r"[0-9;:]*")
HOLD_MAX = 4096  # an unterminated string longer than this is released (and dropped)

_CUBE = (0, 95, 135, 175, 215, 255)  # the xterm 6x6x6 cube's levels
# The 16 basic colours, tuned to read on the log's dark background (as GitHub's dark theme).
_BASIC = ("#484f58", "#ff7b72", "#3fb950", "#d29922", "#58a6ff", "#bc8cff", "#39c5cf", "#b1bac4",
          "#6e7681", "#ffa198", "#56d364", "#e3b341", "#79c0ff", "#d2a8ff", "#56d4dd", "#ffffff")


def xterm_rgb(index: int) -> tuple[int, int, int]:
    """The xterm palette's colour for 16..255 (the cube, then 24 greys)."""
    if index >= 232:
        level = 8 + 10 * (index - 232)
        return level, level, level
    n = index - 16
    return _CUBE[n // 36], _CUBE[n // 6 % 6], _CUBE[n % 6]


def nearest_index(r: int, g: int, b: int) -> int:
    """The 256-palette index (16..255) nearest to a truecolour, by squared RGB distance."""
    def level(v: int) -> int:
        return min(range(6), key=lambda i: abs(_CUBE[i] - v))
    cube = 16 + 36 * level(r) + 6 * level(g) + level(b)
    grey = 232 + min(23, max(0, ((r + g + b) // 3 - 3) // 10))  # greys are 8 + 10k

    def distance(index: int) -> int:
        cr, cg, cb = xterm_rgb(index)
        return (cr - r) ** 2 + (cg - g) ** 2 + (cb - b) ** 2
    return min((cube, grey), key=distance)


def stylesheet() -> str:
    """The classes a rendered log uses: f<n>/g<n> fore/background of the 256 colours, flags."""
    colours = [*_BASIC, *("#{:02x}{:02x}{:02x}".format(*xterm_rgb(i)) for i in range(16, 256))]
    return ("".join(f".f{i}{{color:{c}}}" for i, c in enumerate(colours))
            + "".join(f".g{i}{{background:{c}}}" for i, c in enumerate(colours))
            + ".b{font-weight:700}.d{opacity:.65}.i{font-style:italic}.u{text-decoration:underline}"
            + ".s{text-decoration:line-through}.u.s{text-decoration:underline line-through}")


class Style(NamedTuple):  # a tuple: hashed and compared in C, once per escape sequence
    fg: int | None = None  # palette index 0..255
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False

    def classes(self) -> str:
        names = [f"f{self.fg}" if self.fg is not None else "",
                 f"g{self.bg}" if self.bg is not None else "",
                 "b" if self.bold else "", "d" if self.dim else "", "i" if self.italic else "",
                 "u" if self.underline else "", "s" if self.strike else ""]
        return " ".join(n for n in names if n)

    def sgr(self) -> str:
        """SGR parameters that recreate this style from a reset: how the live tail resumes."""
        codes = [code for on, code in ((self.bold, "1"), (self.dim, "2"), (self.italic, "3"),
                                       (self.underline, "4"), (self.strike, "9")) if on]
        if self.fg is not None:
            codes.append(f"38;5;{self.fg}")
        if self.bg is not None:
            codes.append(f"48;5;{self.bg}")
        return ";".join(codes)


_FLAGS = {1: {"bold": True}, 2: {"dim": True}, 3: {"italic": True}, 4: {"underline": True},
          9: {"strike": True}, 21: {"underline": True}, 22: {"bold": False, "dim": False},
          23: {"italic": False}, 24: {"underline": False}, 29: {"strike": False}}


def _extended(params: list[list[int | None]], i: int) -> tuple[int | None, int]:
    """A 38/48 colour at params[i]: (palette index or None, how many params it used)."""
    head = params[i]
    if len(head) > 1:  # colon form: 38:5:n or 38:2:[colourspace:]r:g:b, all in one param
        sub = [v or 0 for v in head[1:]]
        if sub[0] == 5 and len(sub) >= 2:
            return _clamp(sub[1]), 1
        if sub[0] == 2 and len(sub) >= 4:
            r, g, b = sub[-3:]
            return nearest_index(_byte(r), _byte(g), _byte(b)), 1
        return None, 1
    rest = [p[0] if p[0] is not None else 0 for p in params[i + 1:i + 5]]
    if rest[:1] == [5] and len(rest) >= 2:
        return _clamp(rest[1]), 3
    if rest[:1] == [2] and len(rest) >= 4:
        return nearest_index(_byte(rest[1]), _byte(rest[2]), _byte(rest[3])), 5
    return None, 1 + len(rest[:1])


def _clamp(value: int) -> int | None:
    return value if 0 <= value <= 255 else None


def _byte(value: int) -> int:
    return max(0, min(255, value))


@lru_cache(maxsize=4096)  # logs repeat the same few sequences; a hit costs ~0.1 µs
def apply_sgr(style: Style, raw: str) -> Style:
    """The style after one SGR sequence's parameters (`1;31`, `38;5;208`, `38:2::1:2:3`, ``)."""
    params: list[list[int | None]] = [
        [int(v) if v.isdigit() and len(v) < 10 else None for v in part.split(":")]
        for part in raw.split(";")]
    i = 0
    while i < len(params):
        code = params[i][0] or 0
        used = 1
        if code == 0:
            style = Style()
        elif code in _FLAGS:
            on = params[i][1:2] != [0]  # 4:0 is "no underline"
            style = style._replace(**_FLAGS[code]) if on or code != 4 else style._replace(
                underline=False)
        elif 30 <= code <= 37 or 90 <= code <= 97:
            style = style._replace(fg=code - 30 if code < 90 else code - 82)
        elif 40 <= code <= 47 or 100 <= code <= 107:
            style = style._replace(bg=code - 40 if code < 100 else code - 92)
        elif code in (38, 48):
            colour, used = _extended(params, i)
            if colour is not None:
                style = style._replace(fg=colour) if code == 38 else style._replace(bg=colour)
        elif code == 39:
            style = style._replace(fg=None)
        elif code == 49:
            style = style._replace(bg=None)
        i += used
    return style


@dataclass
class Rendered:
    html: str  # complete lines, each ending in a newline
    last_line: str  # the line still open at the end (no newline yet), as HTML
    style: Style  # the style in force at the end


def unfinished_suffix(text: str) -> int:
    """Length of a trailing escape sequence or carriage return that more bytes may complete."""
    floor = max(0, len(text) - HOLD_MAX)
    start = text.rfind("\x1b", floor)
    if start == len(text) - 1:  # maybe the first half of the ST ending an OSC string
        earlier = text.rfind("\x1b", floor, start)
        start = earlier if earlier >= 0 and _UNFINISHED.fullmatch(text, earlier) else start
    if start >= 0 and _UNFINISHED.fullmatch(text, start):
        return len(text) - start
    return 1 if text.endswith("\r") else 0


PLAIN = Style()


def render(text: str, style: Style = PLAIN) -> Rendered:
    """Render terminal text from `style` on (a growing log: cut its unfinished_suffix first)."""
    lines: list[str] = []
    line: list[str] = []
    overwrite = False  # a carriage return came: the next text replaces the line
    openings: dict[Style, str] = {PLAIN: ""}  # a log uses a few styles many times
    opening = openings.get(style)
    if opening is None:
        opening = openings[style] = f'<span class="{style.classes()}">'
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "text":
            if overwrite:
                line.clear()
                overwrite = False
            chunk = escape(match["text"], quote=False)
            line.append(f"{opening}{chunk}</span>" if opening else chunk)
        elif kind == "nl":
            lines.append("".join(line) + "\n")
            line.clear()
            overwrite = False
        elif kind == "cr":
            overwrite = True
        elif kind == "final" and match["final"] == "m" and _SGR_PARAMS.fullmatch(match["csi"]):
            style = apply_sgr(style, match["csi"])
            opening = openings.get(style)
            if opening is None:
                opening = openings[style] = f'<span class="{style.classes()}">'
    return Rendered("".join(lines), "".join(line), style)
