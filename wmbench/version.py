"""The wmbench version (a module of its own so every other module can import it without
importing the package's public facade)."""
__version__ = "0.1.0"
