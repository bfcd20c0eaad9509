"""Line plots as PNG files, drawn with Pillow alone (no plotting library is a dependency of this project).

One figure is a grid of small panels that share a legend: each panel has a title, labelled axes with round tick
values, gridlines, and one line per series, each series in its own colour and with its own marker shape (so that
the lines stay apart in greyscale too). Enough for the codebook-size study's Fig. 3-style plots; nothing more.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fsq_ref.data.images import save_png

# Colour-blind-safe colours (Okabe and Ito) and marker shapes, used in this order by the series of a figure.
COLOURS = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233), (0, 0, 0))
MARKERS = ("circle", "square", "triangle", "diamond")
SCALE = 2  # drawn at twice the size, then shrunk: smooth lines and text without an antialiasing renderer
PANEL_SIZE = (420, 300)  # pixels of one panel in the written PNG
MARGIN = {"left": 62, "right": 14, "top": 28, "bottom": 42}  # room around a panel's axes for its labels


@dataclasses.dataclass(frozen=True)
class Panel:
    """One small plot: `series` maps a line's name to its (xs, ys); a y of None (a missing value) is skipped."""

    title: str
    x_label: str
    y_label: str
    series: dict[str, tuple[Sequence[float], Sequence[float | None]]]
    y_range: tuple[float, float] | None = None  # values the y axis covers even where no point reaches them


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (multiples of 1, 2 or 5 times a power of ten) from at or below `lo` to at or above `hi`,
    with the step that makes the number of intervals closest to `target`."""
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):  # a single value: widen by half its size (0.5 around zero) each way
        lo, hi = lo - 0.5 * max(abs(lo), 1.0), hi + 0.5 * max(abs(hi), 1.0)
    power = 10.0 ** math.floor(math.log10((hi - lo) / target))

    def span(step):  # (first, last) multiples of `step` that enclose [lo, hi]
        return math.floor(lo / step), math.ceil(hi / step)

    step = min((m * power for m in (1, 2, 5, 10)), key=lambda step: abs(span(step)[1] - span(step)[0] - target))
    digits = max(0, -math.floor(math.log10(step)))  # rounds away float noise such as 0.30000000000000004
    first, last = span(step)
    return [round(i * step, digits) for i in range(first, last + 1)]


def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's built-in scalable font (Pillow >= 10.1, built with FreeType as its wheels are): no font file to find.
    return ImageFont.load_default(size=size * SCALE)


def _marker(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, colour) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - 1.2 * r), (x - 1.2 * r, y + r), (x + 1.2 * r, y + r)], fill=colour)
    else:
        draw.polygon([(x, y - 1.3 * r), (x + 1.3 * r, y), (x, y + 1.3 * r), (x - 1.3 * r, y)], fill=colour)


def _draw_panel(image: Image.Image, panel: Panel, origin: tuple[int, int], styles: dict, fonts) -> None:
    draw, (ox, oy), s = ImageDraw.Draw(image), origin, SCALE
    small, large = fonts
    left, top = ox + MARGIN["left"] * s, oy + MARGIN["top"] * s
    right, bottom = ox + (PANEL_SIZE[0] - MARGIN["right"]) * s, oy + (PANEL_SIZE[1] - MARGIN["bottom"]) * s
    points = [(x, y) for xs, ys in panel.series.values() for x, y in zip(xs, ys) if y is not None]
    xs, ys = [p[0] for p in points] or [0.0], [p[1] for p in points] + list(panel.y_range or ())
    ys = ys or [0.0]
    xticks, yticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))

    inset = 8 * s  # keeps markers on the outermost ticks clear of the frame

    def to_pixel(x, y):
        return (left + inset + (x - xticks[0]) / (xticks[-1] - xticks[0]) * (right - left - 2 * inset),
                bottom - inset - (y - yticks[0]) / (yticks[-1] - yticks[0]) * (bottom - top - 2 * inset))

    for x in xticks:  # vertical gridlines and x tick labels
        px = to_pixel(x, yticks[0])[0]
        draw.line((px, top, px, bottom), fill=(225, 225, 225), width=s)
        draw.text((px, bottom + 4 * s), f"{x:g}", fill="black", font=small, anchor="mt")
    for y in yticks:  # horizontal gridlines and y tick labels
        py = to_pixel(xticks[0], y)[1]
        draw.line((left, py, right, py), fill=(225, 225, 225), width=s)
        draw.text((left - 5 * s, py), f"{y:g}", fill="black", font=small, anchor="rm")
    draw.rectangle((left, top, right, bottom), outline="black", width=s)
    draw.text(((left + right) / 2, oy + 6 * s), panel.title, fill="black", font=large, anchor="mt")
    draw.text(((left + right) / 2, bottom + 22 * s), panel.x_label, fill="black", font=small, anchor="mt")
    # The y label is written horizontally on a strip of its own, turned a quarter and pasted left of the axis.
    strip = Image.new("RGB", (int(bottom - top), 16 * s), "white")
    ImageDraw.Draw(strip).text((strip.width / 2, 8 * s), panel.y_label, fill="black", font=small, anchor="mm")
    image.paste(strip.rotate(90, expand=True), (ox + 2 * s, int(top)))
    for name, (sx, sy) in panel.series.items():
        colour, shape = styles[name]
        pixels = [to_pixel(x, y) for x, y in zip(sx, sy) if y is not None]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2 * s, joint="curve")
        for px, py in pixels:
            _marker(draw, shape, px, py, 3.5 * s, colour)


def line_panels(panels: list[Panel], path, *, columns: int = 2) -> str:
    """Draw `panels` in a grid of `columns`, with one legend for every series name below them; write a PNG.

    Returns the path written, as a string.
    """
    if not panels:
        raise ValueError("line_panels needs at least one panel")
    names = list(dict.fromkeys(name for panel in panels for name in panel.series))
    styles = {name: (COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]) for i, name in enumerate(names)}
    columns = min(columns, len(panels))
    rows, s = math.ceil(len(panels) / columns), SCALE
    legend_height = 30
    width, height = columns * PANEL_SIZE[0] * s, (rows * PANEL_SIZE[1] + legend_height) * s
    image = Image.new("RGB", (width, height), "white")
    fonts = (_font(11), _font(13))
    for i, panel in enumerate(panels):
        row, column = divmod(i, columns)
        _draw_panel(image, panel, (column * PANEL_SIZE[0] * s, row * PANEL_SIZE[1] * s), styles, fonts)
    # The legend: a short line with the marker and the name of each series, in one centred row.
    draw = ImageDraw.Draw(image)
    entry = 44 * s + max((draw.textlength(name, font=fonts[0]) for name in names), default=0)
    x, y = (width - entry * len(names)) / 2, height - legend_height * s / 2
    for name in names:
        colour, shape = styles[name]
        draw.line((x, y, x + 24 * s, y), fill=colour, width=2 * s)
        _marker(draw, shape, x + 12 * s, y, 3.5 * s, colour)
        draw.text((x + 30 * s, y), name, fill="black", font=fonts[0], anchor="lm")
        x += entry
    image = image.resize((width // s, height // s), Image.Resampling.LANCZOS)
    return save_png(path, np.asarray(image))
