"""davserver: a WebDAV file server whose folders and files are database rows."""

__version__ = "0.1.0"
