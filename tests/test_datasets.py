"""The bundled series load from the installed package, with no network, missing values handled."""
import os

import numpy as np
import pytest

import rnnfast
from rnnfast import datasets


def test_files_are_inside_the_installed_package():
    here = os.path.join(os.path.dirname(rnnfast.__file__), "datasets", "data")
    assert sorted(os.listdir(here)) == ["maunaloa_co2_weekly.csv", "sunspots_yearly.csv"]


def test_co2_interpolates_the_missing_weeks():
    dates, co2 = datasets.load_co2()
    assert dates.dtype == np.dtype("datetime64[D]") and len(dates) == len(co2) == 2284
    assert str(dates[0]) == "1958-03-29" and str(dates[-1]).startswith("2001-12")
    assert np.all(np.isfinite(co2)) and 310 < co2.min() and co2.max() < 380
    _, raw = datasets.load_co2(missing="nan")
    gaps = np.isnan(raw)
    assert gaps.sum() == 59
    measured = np.flatnonzero(~gaps)
    for i in np.flatnonzero(gaps):  # each filled week lies between the measured weeks around it
        before, after = raw[measured[measured < i][-1]], raw[measured[measured > i][0]]
        assert min(before, after) <= co2[i] <= max(before, after)
    d2, c2 = datasets.load_co2(missing="drop")
    assert len(c2) == 2284 - 59 and not np.isnan(c2).any() and len(d2) == len(c2)
    with pytest.raises(ValueError, match="missing"):
        datasets.load_co2(missing="zero")


def test_sunspots():
    years, spots = datasets.load_sunspots()
    assert years[0] == 1700 and years[-1] == 2008 and len(spots) == 309
    assert spots.dtype == np.float64 and spots.min() >= 0 and spots[0] == 5
