#!/usr/bin/env python3
"""Charts for bench/compare.sh's scale curves: reads RESULTS/curves.tsv, writes RESULTS/*.svg
and RESULTS/curves.md (the same points as Markdown tables).

    python3 bench/plot.py RESULTS_DIR

Standard library only: the SVG is written by hand. Each chart has Postfix and submitd as two
series; a log-scale axis where the values span decades (message size, sessions, queue depth).
"""
import html
import math
import os
import sys

SERIES = (("postfix", "Postfix", "#c0392b", "4 3"), ("submitd", "submitd", "#1f5fa8", ""))
WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 46, 58
MB = 1048576


def read_points(path):
    """curves.tsv: CURVE, X, SERVER, then KEY=VALUE fields; numbers where they parse."""
    points = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 3:
                continue
            point = {"curve": cols[0], "x": number(cols[1]), "server": cols[2]}
            for field in cols[3:]:
                key, _, value = field.partition("=")
                point[key] = number(value)
            points.append(point)
    return points


def number(text):
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else None


def human_bytes(n):
    if n >= MB:
        return "%g MB" % round(n / MB, 2)
    if n >= 1024:
        return "%g KB" % round(n / 1024, 1)
    return "%d B" % n


def human_count(n):
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= div:
            return "%g%s" % (round(n / div, 2), suffix)
    return "%g" % n


def log_ticks(lo, hi):
    """Powers of ten, with 2 and 5 between them when the range is short."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [m * 10 ** e for e in range(first, last + 1) for m in steps]
    return [t for t in ticks if lo / 1.0001 <= t <= hi * 1.0001]


def nice_linear_ticks(lo, hi, count=5):
    span = (hi - lo) or abs(hi) or 1.0
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    # From the tick at or below lo to the first at or above hi, so that every value is inside.
    ticks = [round(math.floor(lo / step) * step, 10)]
    while ticks[-1] < hi - step * 1e-9 and len(ticks) < 50:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


class Axis:
    """Maps a value to a pixel range; `log` or `linear`."""

    def __init__(self, values, scale, pixels, from_zero=False):
        values = [v for v in values if v is not None and (scale != "log" or v > 0)]
        lo, hi = (min(values), max(values)) if values else (1.0, 10.0)
        self.scale = scale
        if scale == "log":
            self.lo, self.hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
            if self.lo == self.hi:
                self.hi *= 10
            self.ticks = log_ticks(self.lo, self.hi)
        else:
            lo = 0.0 if from_zero else lo
            ticks = nice_linear_ticks(lo, hi if hi > lo else lo + 1)
            self.lo, self.hi, self.ticks = ticks[0], ticks[-1], ticks
        self.p0, self.p1 = pixels

    def at(self, v):
        if self.scale == "log":
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / ((self.hi - self.lo) or 1)
        return self.p0 + f * (self.p1 - self.p0)


def svg_text(x, y, text, anchor="middle", size=12, extra=""):
    return '<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%d"%s>%s</text>' % (
        x, y, anchor, size, extra, html.escape(str(text)))


def chart(path, title, xlabel, ylabel, series, xscale="log", yscale="linear", xfmt=None, yfmt=None):
    """A line chart: series maps a server to [(x, y)]; writes an SVG file."""
    xfmt = xfmt or human_count
    yfmt = yfmt or (lambda v: "%g" % v)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    if not ys:
        return False
    xa = Axis(xs, xscale, (LEFT, WIDTH - RIGHT))
    ya = Axis(ys, yscale, (HEIGHT - BOTTOM, TOP), from_zero=True)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif">' % (WIDTH, HEIGHT, WIDTH, HEIGHT),
           '<rect width="100%" height="100%" fill="white"/>',
           svg_text(WIDTH / 2, 24, title, size=15, extra=' font-weight="bold"')]
    for t in ya.ticks:
        y = ya.at(t)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (LEFT, y, WIDTH - RIGHT, y))
        out.append(svg_text(LEFT - 6, y + 4, yfmt(t), anchor="end", size=11))
    for t in xa.ticks:
        x = xa.at(t)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (x, TOP, x, HEIGHT - BOTTOM))
        out.append(svg_text(x, HEIGHT - BOTTOM + 16, xfmt(t), size=11))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (
        LEFT, TOP, WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM))
    out.append(svg_text((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 14, xlabel, size=12))
    out.append(svg_text(16, (TOP + HEIGHT - BOTTOM) / 2, ylabel, size=12,
                        extra=' transform="rotate(-90 16 %.1f)"' % ((TOP + HEIGHT - BOTTOM) / 2)))
    legend_y = TOP + 16
    for key, name, colour, dash in SERIES:
        pts = sorted(series.get(key, []))
        if not pts:
            continue
        coords = " ".join("%.1f,%.1f" % (xa.at(x), ya.at(y)) for x, y in pts)
        out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>' % (
            coords, colour, ' stroke-dasharray="%s"' % dash if dash else ""))
        for x, y in pts:
            out.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s: %s, %s</title></circle>' % (
                xa.at(x), ya.at(y), colour, name, xfmt(x), yfmt(y)))
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>' % (
            LEFT + 12, legend_y, LEFT + 36, legend_y, colour, ' stroke-dasharray="%s"' % dash if dash else ""))
        out.append(svg_text(LEFT + 42, legend_y + 4, name, anchor="start", size=12))
        legend_y += 18
    out.append("</svg>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    return True


def bars(path, title, ylabel, groups):
    """A bar chart: groups is [(label, {server: value})]."""
    values = [v for _, g in groups for v in g.values() if v is not None]
    if not values:
        return False
    ya = Axis(values + [0], "linear", (HEIGHT - BOTTOM, TOP), from_zero=True)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif">' % (WIDTH, HEIGHT, WIDTH, HEIGHT),
           '<rect width="100%" height="100%" fill="white"/>',
           svg_text(WIDTH / 2, 24, title, size=15, extra=' font-weight="bold"')]
    for t in ya.ticks:
        y = ya.at(t)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (LEFT, y, WIDTH - RIGHT, y))
        out.append(svg_text(LEFT - 6, y + 4, "%g" % t, anchor="end", size=11))
    slot = (WIDTH - LEFT - RIGHT) / len(groups)
    bar = slot / (len(SERIES) + 1.5)
    for i, (label, group) in enumerate(groups):
        x0 = LEFT + i * slot + bar * 0.75
        for j, (key, name, colour, _) in enumerate(SERIES):
            v = group.get(key)
            if v is None:
                continue
            x, y = x0 + j * bar, ya.at(v)
            out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %g</title></rect>' % (
                x, y, bar * 0.9, ya.at(0) - y, colour, name, v))
            out.append(svg_text(x + bar * 0.45, y - 4, "%s %g" % (name, round(v, 1)), size=11))
        out.append(svg_text(LEFT + (i + 0.5) * slot, HEIGHT - BOTTOM + 16, label, size=11))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (
        LEFT, TOP, WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM))
    out.append(svg_text(16, (TOP + HEIGHT - BOTTOM) / 2, ylabel, size=12,
                        extra=' transform="rotate(-90 16 %.1f)"' % ((TOP + HEIGHT - BOTTOM) / 2)))
    out.append("</svg>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    return True


def series_of(points, curve, key, xmap=lambda x: x):
    out = {}
    for p in points:
        v = p.get(key)
        if p["curve"] == curve and isinstance(v, float) and isinstance(p["x"], float):
            out.setdefault(p["server"], []).append((xmap(p["x"]), v))
    return out


# (file, curve, key, title, x label, y label, x scale, y scale, x format)
CHARTS = (
    ("size-msgs", "size", "msgs_per_sec", "Throughput by message size (465, 16 sessions)",
     "message size", "messages per second", "log", "log", human_bytes),
    ("size-mbps", "size", "mb_per_sec", "Message bytes per second by size (465, 16 sessions)",
     "message size", "MB/s (2^20 bytes)", "log", "linear", human_bytes),
    ("size-cpu", "size", "cpu_ms_per_mb", "Server CPU per MB, accepted and relayed",
     "message size", "CPU ms per MB", "log", "log", human_bytes),
    ("conc-msgs", "conc", "msgs_per_sec", "Throughput by concurrency (465, 50 per connection, 10 KB)",
     "sessions at once", "messages per second", "log", "linear", None),
    ("conc-p99", "conc", "p99_ms", "p99 latency by concurrency (465, 50 per connection, 10 KB)",
     "sessions at once", "p99 ms", "log", "log", None),
    ("rcpts-msgs", "rcpts", "msgs_per_sec", "Throughput by recipients per message (465, 16 sessions)",
     "recipients per message", "messages per second", "log", "linear", None),
    ("rcpts-cpu", "rcpts", "cpu_ms", "Server CPU per message by recipients",
     "recipients per message", "CPU ms per message", "log", "linear", None),
    ("depth-banner", "depth", "banner_ms", "Start to first 220 by queue depth",
     "deferred messages in the queue (0 drawn at 1)", "ms", "log", "log", None),
    ("depth-rss", "depth", "settled_mb", "Memory after start-up by queue depth",
     "deferred messages in the queue (0 drawn at 1)", "MB (submitd RSS, Postfix PSS)", "log", "linear", None),
    ("depth-msgs", "depth", "msgs_per_sec", "New submissions by queue depth (465, 50 per connection)",
     "deferred messages in the queue (0 drawn at 1)", "messages per second", "log", "linear", None),
)


def markdown(points):
    """Every point, one table per curve, Postfix and submitd side by side."""
    lines = []
    for curve in ("size", "rcpts", "conc", "mem", "depth"):
        rows = [p for p in points if p["curve"] == curve]
        if not rows:
            continue
        keys = []
        for p in rows:
            keys += [k for k in p if k not in ("curve", "x", "server") and k not in keys]
        lines.append("| %s | server | %s |" % (curve, " | ".join(keys)))
        lines.append("|---|---|%s|" % "|".join("---:" for _ in keys))
        for p in sorted(rows, key=lambda p: (p["x"] if isinstance(p["x"], float) else 0, p["server"])):
            x = p["x"]
            x = human_bytes(x) if curve in ("size", "mem") and isinstance(x, float) else (
                human_count(x) if isinstance(x, float) else x)
            lines.append("| %s | %s | %s |" % (x, p["server"], " | ".join(
                "-" if p.get(k) is None else ("%g" % p[k] if isinstance(p[k], float) else str(p[k]))
                for k in keys)))
        lines.append("")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 2:
        print("usage: plot.py RESULTS_DIR", file=sys.stderr)
        return 2
    results = sys.argv[1]
    points = read_points(os.path.join(results, "curves.tsv"))
    for p in points:
        if p["curve"] == "depth":
            if isinstance(p.get("settled_kb"), float):
                p["settled_mb"] = p["settled_kb"] / 1024
    written = []
    for name, curve, key, title, xl, yl, xs, ys, xf in CHARTS:
        # A log axis has no 0: the empty queue is drawn at 1.
        series = series_of(points, curve, key, (lambda x: max(x, 1.0)) if curve == "depth" else (lambda x: x))
        path = os.path.join(results, name + ".svg")
        if chart(path, title, xl, yl, series, xs, ys, xf):
            written.append(path)
    mem = {p["server"]: p.get("above_idle_kb") for p in points if p["curve"] == "mem"}
    if mem:
        mb = {k: (v / 1024 if isinstance(v, float) else None) for k, v in mem.items()}
        path = os.path.join(results, "mem.svg")
        if bars(path, "Peak memory above idle, 16 sessions x 25 MB at once", "MB",
                [("16 x 25 MB (submitd: VmHWM - idle RSS; Postfix: smtpd+cleanup PSS)", mb)]):
            written.append(path)
    with open(os.path.join(results, "curves.md"), "w", encoding="utf-8") as f:
        f.write(markdown(points))
    for path in written:
        print("plot.py: wrote %s" % path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
