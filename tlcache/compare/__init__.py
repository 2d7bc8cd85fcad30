"""tlcache compare: frozen heads against fine-tuning on the user's own data.

:func:`compare` runs every method on the same training draws, seeds and test items (tlcache.compare.run), keeps
each finished cell so that a rerun resumes (tlcache.compare.cells), and reports the paired verdicts
(tlcache.compare.stats) with learning curves (tlcache.compare.summary).
"""

from tlcache.compare.run import CompareResult, compare

__all__ = ["CompareResult", "compare"]
