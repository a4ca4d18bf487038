"""Fast in-process tests.

Hypothesis runs with one profile for all of them: no per-example deadline and no "input generation is
slow" health check, both of which measure the machine's load (the suite runs on shared, busy cores), not
the code; the properties themselves are unchanged.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("tunmesh", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tunmesh")
