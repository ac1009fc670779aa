"""Authentication: the WebDAV domain controller, password hashing, the credential cache."""
