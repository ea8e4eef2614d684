"""hoopy: an identity-aware gateway between automated agents and production systems."""

__version__ = "0.1.0"
