#!/usr/bin/env python3
"""Draws docs/fleet-scaling.svg: how the fleet's figures grow with its size.

The numbers are the medians of docs/PERFORMANCE.md, "How the fleet scales",
measured with
    cargo run --release --example fleet -- --engines N --svg - --default-only --idle-secs 3
for N = 1,000, 10,000 and 100,000 (3 runs each, 2026-12-01). Plain SVG, no
dependencies:  python3 docs/fleet-scaling.py
"""

import math
import pathlib

ENGINES = [1_000, 10_000, 100_000]
PANELS = [
    # title, unit, values, reference line (label, values) or None
    ("Memory per idle engine", "bytes",
     [4465, 4114, 4077], ("engine alone, no transport state", [3301, 3014, 2980])),
    ("Spawn and connect, per engine", "µs",
     [5.0, 5.4, 5.61], None),
    ("Broker restart: 99 % back", "s after the restart",
     [33.3, 48.2, 162.1], ("the floor: outage + engines / rate", [31.0, 40.0, 130.0])),
]

W, H = 300, 230          # one panel
LEFT, RIGHT, TOP, BOTTOM = 58, 36, 34, 42


def panel(x0, title, unit, values, ref):
    top = max(values + (ref[1] if ref else []))
    ymax = top * 1.15
    px = lambda i: x0 + LEFT + (W - LEFT - RIGHT) * (math.log10(ENGINES[i]) - 3) / 2
    py = lambda v: TOP + (H - TOP - BOTTOM) * (1 - v / ymax)
    out = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>']
    # axes
    out.append(f'<line x1="{x0 + LEFT}" y1="{TOP}" x2="{x0 + LEFT}" y2="{H - BOTTOM}" stroke="#444"/>')
    out.append(f'<line x1="{x0 + LEFT}" y1="{H - BOTTOM}" x2="{x0 + W - RIGHT}" y2="{H - BOTTOM}" stroke="#444"/>')
    for i, n in enumerate(ENGINES):
        out.append(f'<text x="{px(i)}" y="{H - BOTTOM + 16}" text-anchor="middle">{n:,}</text>')
    out.append(f'<text x="{x0 + LEFT + (W - LEFT - RIGHT) / 2}" y="{H - 8}" text-anchor="middle">engines (log scale)</text>')
    for k in range(5):
        v = ymax * k / 4
        label = f"{v:,.0f}" if ymax >= 100 else f"{v:.1f}"
        out.append(f'<line x1="{x0 + LEFT - 4}" y1="{py(v)}" x2="{x0 + W - RIGHT}" y2="{py(v)}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 + LEFT - 6}" y="{py(v) + 4}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{x0 + 12}" y="{TOP + (H - TOP - BOTTOM) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 {x0 + 12} {TOP + (H - TOP - BOTTOM) / 2})">{unit}</text>')

    def line(vals, colour, dash="", below=False):
        pts = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(vals))
        res = [f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2" {dash}/>']
        for i, v in enumerate(vals):
            res.append(f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
            dy = 16 if below else -7
            res.append(f'<text x="{px(i):.1f}" y="{py(v) + dy:.1f}" text-anchor="middle" fill="{colour}">{v:,}</text>')
        return res

    out += line(values, "#1f5fa8")
    if ref:
        out += line(ref[1], "#999", 'stroke-dasharray="5,4"', below=True)
        out.append(f'<text x="{x0 + W - RIGHT}" y="{TOP - 4}" text-anchor="end" fill="#777" font-size="10">dashed: {ref[0]}</text>')
    return out


def main():
    width = W * len(PANELS)
    body = []
    for k, (title, unit, values, ref) in enumerate(PANELS):
        body += panel(k * W, title, unit, values, ref)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" '
           f'font-family="sans-serif" font-size="11">\n'
           f'<rect width="{width}" height="{H}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")
    path = pathlib.Path(__file__).resolve().parent / "fleet-scaling.svg"
    path.write_text(svg)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
