"""How to mount the server on each platform, with this server's own URL filled in."""

from __future__ import annotations

from urllib.parse import urlsplit


def instructions(base_url: str, user: str) -> str:
    """Text telling a person how to connect each common client to ``base_url``/files/."""
    base = base_url.rstrip("/")
    files = f"{base}/files/"
    parts = urlsplit(base)
    secure = parts.scheme == "https"
    host = parts.netloc
    ssl = "@SSL" if secure else ""
    port = f"@{parts.port}" if parts.port else ""
    unc = f"\\\\{parts.hostname}{ssl}{port}\\DavWWWRoot\\files"
    gnome = f"{'davs' if secure else 'dav'}://{user}@{host}/files/"
    lines = [
        f"davserver at {files} (user {user})",
        "",
        "Windows Explorer: Map network drive, folder:",
        f"  {files}",
        f"  or in a terminal: net use Z: {unc} /user:{user} *",
    ]
    if not secure:
        lines.append(
            "  Windows sends Basic passwords only over HTTPS unless HKLM\\SYSTEM\\"
            "CurrentControlSet\\Services\\WebClient\\Parameters\\BasicAuthLevel is 2;"
            " use TLS (server.ssl_certificate) instead."
        )
    lines += [
        "  Files over 50 MB need HKLM\\SYSTEM\\CurrentControlSet\\Services\\WebClient\\"
        "Parameters\\FileSizeLimitInBytes raised (4 GB at most).",
        "",
        f"macOS Finder: Go > Connect to Server (Cmd-K), address {files}",
        "",
        f"GNOME Files: Other Locations > Connect to Server, address {gnome}",
        "",
        "davfs2 (Linux):",
        f"  mount -t davfs {files} /mnt/dav",
        "  with 'buf_size 64' and 'use_locks 1' in davfs2.conf (davfs2 1.6.1 on recent",
        "  kernels fails 'ls' with EINVAL without buf_size 64)",
        "",
        "rclone (keeps modification times, checks SHA-1 and MD5):",
        f"  rclone config create dav webdav url={files} vendor=owncloud user={user}"
        " pass=$(rclone obscure 'PASSWORD')",
        "  rclone copy ./local dav:backup",
        "",
        "curl:",
        f"  curl -u {user} -T report.pdf {files}report.pdf",
        f"  curl -u {user} -X PROPFIND -H 'Depth: 1' {files}",
    ]
    return "\n".join(lines) + "\n"
