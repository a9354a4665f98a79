"""Test-session settings.

Hypothesis draws its examples from a fixed seed in the default run, so the
suite gives the same verdict on every machine and every CI run (a property
that fails does so reproducibly). ``HYPOTHESIS_PROFILE=explore pytest ...``
draws fresh examples each run to hunt for new counterexamples.
"""

import os

from hypothesis import settings

settings.register_profile("default-run", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default-run"))
