"""Trained runs: checkpoints and run directories, stacking and export, pruning.

Registers the ``stacked`` data source, which reads trained runs, in :data:`energydsl.data.SOURCES`
(the data layer does not know about runs): import :mod:`energydsl.runs` before describing or
loading a spec's data.
"""

from energydsl.data import SOURCES
from energydsl.runs import stacking

SOURCES.register(stacking.STACKED)
