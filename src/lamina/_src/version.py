"""The version of lamina, in one place: the package and the files it writes read it here."""

__version__ = "0.1.0"
