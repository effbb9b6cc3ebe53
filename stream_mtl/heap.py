"""frozen_heap: a long loop's garbage collections no longer scan what was there before it.

CPython's cycle collector scans every tracked object of a generation when it collects
it, and a full collection comes each time the objects that reached the oldest generation
since the last one number a quarter of those already there. A learning loop keeps a few
hundred thousand such objects alive from its start (torch, pandas and River import
that many; the model holds more), while each poll's messages make tens of thousands of
short-lived dicts and floats, many of which live long enough to reach the oldest
generation before the poll is done: so a full collection comes every few polls, and each
one scans all the objects of the libraries again. `gc.freeze()` moves the objects alive
now into a permanent generation that collections skip (Python's documentation suggests
it for the same reason before forking workers); `gc.unfreeze()` at the end puts them
back, so that nothing outlives the loop frozen. Reference counting still frees whatever
stops being used meanwhile; only a reference cycle among the frozen objects that becomes
garbage during the loop waits until its end.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen_heap(enabled: bool = True) -> Iterator[None]:
    """Freeze the objects tracked now for the duration of the block, then unfreeze them.

    If something else has frozen objects already (the application, or an enclosing
    block), or `enabled` is False, the block leaves the collector as it finds it.

    >>> import gc
    >>> with frozen_heap():
    ...     gc.get_freeze_count() > 0
    True
    >>> gc.get_freeze_count()
    0
    >>> with frozen_heap(enabled=False):
    ...     gc.get_freeze_count()
    0
    """
    if not enabled or gc.get_freeze_count():
        yield
        return
    gc.collect()  # what is garbage already is not kept until the end
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
