"""The work queue (issue 13): CHIME/FRB-style ``Work`` items that any code deposits into its
pipeline's bucket and that pull workers withdraw under a lease, perform and update.

``model`` is the validated record and its statuses; ``leases`` the engine task that puts
works whose lease ran out back in their bucket. The SQL is in ``wfe.engine.repository.works``.
"""

from __future__ import annotations
