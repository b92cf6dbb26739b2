"""ntklab: does the neural tangent kernel explain how my network generalizes?"""

__version__ = "0.1.0"
