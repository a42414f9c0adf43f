"""Trained runs: checkpoints and run directories, stacking and export, pruning.

The ``stacked`` data source, which reads trained runs, lives here (runs/stacking.py) and reaches
:data:`energydsl.data.SOURCES` through the package's own ``energydsl.data`` entry point, as a
plugin's source would: the data layer never imports upward.
"""
