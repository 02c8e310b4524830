"""vfl_cli: vertical federated learning where everything that crosses between parties is a file."""

__version__ = "0.1.0"

__all__ = ["__version__"]
