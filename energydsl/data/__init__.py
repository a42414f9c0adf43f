"""The data sources: one module per source, registered here (one line each).

A new source is a module with its loader, describer and argument checks gathered in a
:class:`Source`, and one line below; the ``stacked`` source, which needs trained runs, is
registered by :mod:`energydsl.runs`.  A source from another package registers through the
``energydsl.data`` entry point group instead.
"""

from energydsl.data import features, files, mnist, patches, shards, synthetic
from energydsl.data.base import (
                                 SOURCES,
                                 DataError,
                                 Dataset,
                                 Description,
                                 Samples,
                                 Source,
                                 data_footprint,
                                 describe_source,
                                 load_data,
)

SOURCES.register(mnist.SOURCE)
SOURCES.register(patches.SOURCE)
SOURCES.register(synthetic.SOURCE)
SOURCES.register(files.SOURCE)
SOURCES.register(features.SOURCE)
SOURCES.register(shards.SOURCE)

__all__ = ["SOURCES", "DataError", "Dataset", "Description", "Samples", "Source", "data_footprint", "describe_source",
           "load_data"]
