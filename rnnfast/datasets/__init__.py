"""Two public-domain series shipped inside the package (no network needed), for examples and demos.

* ``load_co2()``: weekly atmospheric CO2 (ppmv) at Mauna Loa Observatory, March 1958 to December 2001
  (Keeling, C.D. and T.P. Whorf, 2004, "Atmospheric CO2 concentrations derived from flask air samples at sites
  in the SIO network", Trends: A Compendium of Data on Global Change, CDIAC, Oak Ridge National Laboratory).
  Some weeks have no value.
* ``load_sunspots()``: yearly sunspot activity 1700 to 2008 (National Geophysical Data Center, NOAA).

Both are U.S. government data as redistributed in the statsmodels package's datasets.
"""
from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np

__all__ = ["load_co2", "load_sunspots"]


def _rows(name):
    text = resources.files(__name__).joinpath("data", name).read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    next(reader)  # the header
    return [row for row in reader if row]


def load_co2(missing="interpolate"):
    """Weekly Mauna Loa CO2: (dates (N,) datetime64[D], co2 (N,) float64 in ppmv).

    missing: what to do with the weeks that have no value: "interpolate" (linearly in time between the
    neighbouring measured weeks; the default), "drop" (leave those weeks out) or "nan" (keep them as NaN).
    """
    if missing not in ("interpolate", "drop", "nan"):
        raise ValueError(f"missing must be 'interpolate', 'drop' or 'nan', got {missing!r}")
    rows = _rows("maunaloa_co2_weekly.csv")
    dates = np.array([f"{r[0][:4]}-{r[0][4:6]}-{r[0][6:8]}" for r in rows], dtype="datetime64[D]")
    co2 = np.array([float(r[1]) if len(r) > 1 and r[1].strip() else np.nan for r in rows])
    gap = np.isnan(co2)
    if missing == "drop":
        return dates[~gap], co2[~gap]
    if missing == "interpolate":
        t = dates.astype(np.int64).astype(np.float64)
        co2 = co2.copy()
        co2[gap] = np.interp(t[gap], t[~gap], co2[~gap])
    return dates, co2


def load_sunspots():
    """Yearly sunspot activity: (years (N,) int64, activity (N,) float64), 1700 to 2008."""
    rows = _rows("sunspots_yearly.csv")
    years = np.array([int(float(r[0])) for r in rows], dtype=np.int64)
    values = np.array([float(r[1]) for r in rows])
    return years, values
