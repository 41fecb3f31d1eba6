"""A tiny built-in 5x7 bitmap font for chart labels: digits, A-Z and a few symbols.

Each glyph is seven rows, top to bottom, written as two hex digits per row; bit 4 of a row is its
leftmost column. Text is uppercased; a character without a glyph is drawn as ``?``.
"""

from __future__ import annotations

from collections.abc import Iterator

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 7
ADVANCE = GLYPH_WIDTH + 1

_GLYPHS: dict[str, str] = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F",
    "3": "1F02040201110E", "4": "02060A121F0202", "5": "1F101E0101110E",
    "6": "0608101E11110E", "7": "1F010204080808", "8": "0E11110E11110E",
    "9": "0E11110F01020C", "A": "0E1111111F1111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F",
    "F": "1F10101E101010", "G": "0E11101711110F", "H": "1111111F111111",
    "I": "0E04040404040E", "J": "0702020202120C", "K": "11121418141211",
    "L": "1010101010101F", "M": "111B1515111111", "N": "11111915131111",
    "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D",
    "R": "1E11111E141211", "S": "0F10100E01011E", "T": "1F040404040404",
    "U": "1111111111110E", "V": "11111111110A04", "W": "1111111515150A",
    "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F",
    " ": "00000000000000", ".": "00000000000C0C", ",": "000000000C0408",
    "-": "0000001F000000", "+": "0004041F040400", ":": "000C0C000C0C00",
    "·": "0000000C0C0000", "_": "0000000000001F", "/": "00010204081000",
    "(": "02040808080402", ")": "08040202020408", "?": "0E110102040004",
    "=": "00001F001F0000", "%": "18190204081303",
}


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` drawn at ``scale`` (no trailing gap)."""
    return max(len(text) * ADVANCE - 1, 0) * scale


def text_pixels(text: str) -> Iterator[tuple[int, int]]:
    """The lit pixels of ``text`` at scale 1, as (x, y) offsets from its top-left corner."""
    for index, char in enumerate(text.upper()):
        rows = _GLYPHS.get(char, _GLYPHS["?"])
        for y in range(GLYPH_HEIGHT):
            bits = int(rows[2 * y:2 * y + 2], 16)
            for x in range(GLYPH_WIDTH):
                if bits & (0x10 >> x):
                    yield index * ADVANCE + x, y
