"""ntklab: does the neural tangent kernel explain how my network generalizes?"""

from ntklab.explain import explain

__version__ = "0.1.0"
__all__ = ["explain"]
