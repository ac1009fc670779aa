"""WsgiDAV plug-ins: the DAV provider, the lock storage and their helpers."""
