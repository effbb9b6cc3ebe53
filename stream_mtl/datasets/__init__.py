"""Real multi-task data sets that ship with the library, as streams of observations.

Each is loaded like River's data sets - `for obs in School(): ...` - from a NumPy
archive inside the package (no download, no pickle); `arrays()` gives the stored
arrays. Cite the papers named in a data set's docstring when you report results on it.
"""

from stream_mtl.datasets.base import Dataset
from stream_mtl.datasets.landmine import Landmine
from stream_mtl.datasets.sarcos import SARCOS
from stream_mtl.datasets.school import School

__all__ = ["SARCOS", "Dataset", "Landmine", "School"]
