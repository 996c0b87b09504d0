"""disarm-pipeline: a BIDS-App that removes scanner effects from T1-weighted MRI."""

__version__ = "0.1.0"
__all__ = ["__version__"]
