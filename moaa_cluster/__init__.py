"""moaa-cluster: Mixture-of-Agents Alignment (arXiv 2505.03059) on hardware you own."""

__version__ = "0.1.0"
