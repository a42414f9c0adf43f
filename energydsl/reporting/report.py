"""``report.html``: one self-contained page per run — summary, pictures, curves, spec.

The pictures are embedded (base64 PNG), so the file can be mailed or archived on
its own.  It is rebuilt at the end of a run and by ``energydsl plot DIR``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from energydsl.atomic import atomic_write

REPORT_FILE = "report.html"

CAPTIONS = {
    "filters.png": "Decoder columns (dictionary atoms), laid out on the spec's map or tree when it has one; "
                   "at most 256 of them (the most used units, a window of the map around the most used unit, "
                   "or the units of the tree nearest its root; the title says which).",
    "curves.png": "Held-out energy, each term and the errors after every epoch.",
    "sparsity.png": "Active units per held-out sample, and how often each unit is active.",
    "tree.png": "The tree, each unit coloured by its activation frequency (at most its 256 units nearest the root).",
    "firing.png": "Log-density histogram of unit firing: log10 of each unit's firing frequency on the held-out "
                  "set; units that never fired there in the red bin; dense units right of the dashed line (10 %).",
    "amortisation.png": "Each held-out sample's energy under the encoder's codes (red) and after a few steps "
                        "of inference from them (blue), against the optimal energy of the same terms "
                        "(energydsl gap); the black line is the optimum.",
    "orientation.png": "Orientation map: each filter's preferred orientation (hue; from its Fourier energy) at its "
                       "place on the map, paler the less oriented the filter; white and black dots mark pinwheels "
                       "of charge +1/2 and -1/2, where the orientation turns by 180 degrees around a plaquette. "
                       "Their count, density (per squared orientation period) and the map's smoothness are in the "
                       "summary.",
    "angles.png": "Angle between each unit's encoder row and decoder column: part units (< 0.5 rad) "
                  "and categorical units (> 0.7 rad).",
}  # fmt: skip

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; } figcaption { color: #555; }
pre { background: #f8f8f8; padding: 1em; overflow-x: auto; }
"""


def write_report(directory: Path, summary: dict, history: list[dict], pictures: list[Path], source: str,
                 notes: list[str] = ()) -> Path:
    """Write ``report.html`` into the run directory; returns its path.  ``notes``: a line for each
    figure of the summary left out or estimated (a wide model's bounded analyses)."""
    title = f"energydsl run: {summary.get('spec', directory.name)}"
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>", _key_values(summary)]
    if notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    if history:
        parts += ["<h2>Epochs</h2>", _epoch_table(history)]
    parts.append("<h2>Pictures</h2>")
    parts += [_figure(path) for path in pictures]
    parts += _amortisation_section(directory)
    parts += ["<h2>Spec</h2>", f"<pre>{html.escape(source)}</pre>"]
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")  # fmt: skip
    path = directory / REPORT_FILE
    atomic_write(path, page.encode())
    return path


def _amortisation_section(directory: Path) -> list[str]:
    """The amortisation gap that ``energydsl gap`` measured on this run, if it has."""
    figures, picture = directory / "amortisation.json", directory / "amortisation.png"
    if not figures.exists():
        return []
    part = ["<h2>Amortisation gap</h2>", "<p>The encoder's codes against the optimal codes of the same energy, "
            "as <code>energydsl gap</code> measured them on held-out samples.</p>", _key_values(json.loads(figures.read_text()))]
    return part + ([_figure(picture)] if picture.exists() else [])


def _key_values(values: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_number(v))}</td></tr>"
                   for k, v in values.items())  # fmt: skip
    return f"<table>{rows}</table>"


def _epoch_table(history: list[dict]) -> str:
    keys = list(dict.fromkeys(key for metrics in history for key in metrics))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_number(m.get(k, '')))}</td>" for k in keys) + "</tr>"
                   for m in history)  # fmt: skip
    return f"<table><tr>{head}</tr>{rows}</table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    caption = CAPTIONS.get(path.name, f"{path.stem} as a heat map.")
    return (f"<figure><img alt='{html.escape(path.name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption><b>{html.escape(path.name)}</b>: {html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)
