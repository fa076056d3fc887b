"""ltu_core: the science of the erasure service.

A plain library: datasets with per-sample and per-subject ids, timm models stored as safetensors,
one seeded training recipe, LTU and the baselines behind one registry, membership inference and
the evaluation protocol. It imports nothing of the service, reads no environment variables and
prints nothing: long operations report through a progress callback.
"""

__version__ = "0.1.0"
