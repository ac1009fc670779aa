"""``davserver variants rebuild``: make the thumbnails and previews of every image ahead of time.

Useful after an import, after turning ``images.render_on_upload`` on, or (with ``--force``)
after changing Pillow or the image settings. Progress goes to stderr about once a second and
each failure on a line of its own; the summary to stdout (``--json`` for scripts). The exit
status is 1 when some image could not be converted. A file named like an image that is not
one (``notes.jpg`` holding text) is counted apart, as not an image, and is no failure: a
nightly run would otherwise fail for good over one misnamed file.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from davserver.commands.common import add_json_flag, emit_item, open_services
from davserver.errors import DomainError, UnsupportedMedia

_PROGRESS_EVERY = 1.0  # seconds between progress lines


def register(commands: Any) -> None:
    group = commands.add_parser("variants", help="image thumbnails and previews")
    variant_commands = group.add_subparsers(dest="variants_command", required=True)
    rebuild = variant_commands.add_parser(
        "rebuild",
        help="make the configured thumbnail and preview sizes of every image",
        description="Make, for the current version of every file that looks like an image, "
        "the variants a plain ?thumbnail=N or ?preview=N asks for (images.thumbnail_sizes and "
        "images.preview_sizes). Existing variants are kept unless --force; those whose bytes "
        "the blob store lost are made again. Safe while the server runs.",
    )
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="drop every stored variant of each image first and make them anew",
    )
    rebuild.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_json_flag(rebuild)
    rebuild.set_defaults(func=cmd_rebuild)


def cmd_rebuild(args: argparse.Namespace) -> int:
    made = kept = not_images = 0
    failures: list[dict[str, str]] = []
    with open_services(args) as services:
        sources = services.variants.sources()
        total = len(sources)
        last_line = 0.0
        for done, source in enumerate(sources, start=1):
            try:
                result = services.variants.rebuild(source, force=args.force)
            except UnsupportedMedia:
                not_images += 1
            except DomainError as exc:
                failures.append({"name": source.name, "sha256": source.sha256, "error": str(exc)})
                print(f"variants: {source.name}: {exc}", file=sys.stderr, flush=True)
            else:
                made += result.made
                kept += result.kept
            now = time.monotonic()
            if not args.quiet and (now - last_line >= _PROGRESS_EVERY or done == total):
                last_line = now
                print(
                    f"variants: {done}/{total} images, {made} made, {kept} kept, "
                    f"{len(failures)} failed",
                    file=sys.stderr,
                    flush=True,
                )
    summary: dict[str, Any] = {
        "images": total,
        "made": made,
        "kept": kept,
        "failed": len(failures),
        "not_images": not_images,
    }
    if args.json:
        summary["failures"] = failures
    emit_item(args, summary)
    return 1 if failures else 0
