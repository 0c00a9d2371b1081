"""homogen: versioned synthetic homography datasets from image collections.

The pure library (no Prefect, no torch): sources, sampling, warping, stores, validation, versions.
"""

from homogen.schema import SCHEMA_VERSION
from homogen.versions import GENERATOR_VERSION

__version__ = "0.1.0"
__all__ = ["GENERATOR_VERSION", "SCHEMA_VERSION", "__version__"]
