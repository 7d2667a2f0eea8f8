"""The model manager, where users of the original layout look for it.

The manager decides which model units (``asr``, ``align``) are resident and for
how long: units load lazily, may co-reside (``POLYASR_COLOAD=1``) or evict each
other (``0``), and leave after ``POLYASR_IDLE_EVICT_SECONDS`` without use. The
code lives in :mod:`polyasr.models.manager` (the residency policy) and
:mod:`polyasr.models.unit` (one unit's leases, idle clock and scheduler
thread); this module is its documented public face. Code inside the service
and the tests import from the defining modules.
"""

from __future__ import annotations

from polyasr.models.manager import AsrModelManager, ModelBusy
from polyasr.models.scheduler import DecodeTimeout, ServerBusy
from polyasr.models.unit import ModelUnavailable, NotResident

__all__ = ["AsrModelManager", "DecodeTimeout", "ModelBusy", "ModelUnavailable", "NotResident", "ServerBusy"]
