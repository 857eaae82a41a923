"""``infergate keys``: add, list and remove API keys in the keys file.

The file is ``--file PATH``, else the ``[auth] keys_file`` of ``--config FILE`` (relative to
that config), else ``keys.toml`` in the current folder. ``add`` prints the new secret once, on
stdout alone (so ``SECRET=$(infergate keys add NAME)`` works); only its SHA-256 is stored.
Running servers pick up changes on SIGHUP.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from infergate.app.config import ConfigError, load_config
from infergate.engine.auth.keys import Key, KeysFileError, add_key, list_keys, remove_key

DEFAULT_KEYS_FILE = "keys.toml"


def build_parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--file", metavar="PATH", help="keys file (default: see --config)")
    where.add_argument(
        "--config",
        metavar="FILE",
        help=f"use the [auth] keys_file of this config (default: ./{DEFAULT_KEYS_FILE})",
    )
    p = argparse.ArgumentParser(prog="infergate keys", description="Manage API keys.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{add,list,remove}")

    add = sub.add_parser("add", parents=[where], help="add a key and print its secret once")
    add.add_argument("name", help="unique name: letters, digits, '.', '_', '-' (1-64)")
    add.add_argument("--models", metavar="M1,M2", help="models it may use (default: all)")
    add.add_argument(
        "--max-priority",
        metavar="N",
        type=int,
        default=1,
        help="highest priority level it may ask for; 1 is the highest (default: 1)",
    )
    add.add_argument("--rps", metavar="X", type=float, default=0.0, help="requests per second")
    add.add_argument(
        "--burst", metavar="N", type=int, help="request burst (default: rps rounded up)"
    )
    add.add_argument(
        "--items-per-minute",
        metavar="X",
        type=float,
        default=0.0,
        help="items (tokens for text models) per minute",
    )
    add.add_argument(
        "--items-burst",
        metavar="N",
        type=int,
        help="item burst, also the largest request in items (default: one minute's worth)",
    )
    add.add_argument(
        "--max-concurrency", metavar="N", type=int, default=0, help="requests in flight at once"
    )
    add.add_argument(
        "--weight", metavar="W", type=float, default=1.0, help="fair-share weight (default: 1)"
    )

    sub.add_parser("list", parents=[where], help="list the keys (never their secrets)")
    rm = sub.add_parser("remove", parents=[where], help="remove a key")
    rm.add_argument("name")
    return p


def keys_path(file: str | None, config: str | None) -> str:
    """The keys file the command edits.

    Raises:
        ConfigError: the config cannot be loaded or names no keys file.
    """
    if file:
        return file
    if config:
        loaded = load_config(config)
        keys_file = loaded.server.auth.keys_file
        if not keys_file:
            raise ConfigError(f"config {config} sets no [auth] keys_file; pass --file PATH")
        return os.path.normpath(os.path.join(loaded.base_dir, keys_file))
    return DEFAULT_KEYS_FILE


def _default_burst(rate: float) -> int:
    return max(1, math.ceil(rate)) if rate > 0 else 0


def _limit(rate: float, burst: int, unit: str) -> str:
    return "-" if rate <= 0 else f"{rate:g}{unit} burst {burst}"


def _row(k: Key) -> list[str]:
    return [
        k.name,
        ",".join(k.models) if k.models is not None else "*",
        str(k.max_priority),
        _limit(k.requests_per_second, k.requests_burst, "/s"),
        _limit(k.items_per_minute, k.items_burst, "/min"),
        str(k.max_concurrency) if k.max_concurrency else "-",
        f"{k.weight:g}",
        k.sha256[:12],
    ]


def _print_table(keys: tuple[Key, ...]) -> None:
    rows = [["NAME", "MODELS", "MAX-PRIO", "REQUESTS", "ITEMS", "CONCURRENCY", "WEIGHT", "SHA256"]]
    rows += [_row(k) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str]) -> int:
    """Run ``infergate keys ARGV``; 0 on success, 1 when the edit is refused, 2 on a usage
    or config error."""
    args = build_parser().parse_args(argv)
    try:
        path = keys_path(args.file, args.config)
    except ConfigError as e:
        print(f"infergate keys: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "add":
            models = None
            if args.models is not None:
                models = [m.strip() for m in args.models.split(",") if m.strip()]
            burst = args.burst if args.burst is not None else _default_burst(args.rps)
            items_burst = args.items_burst
            if items_burst is None:
                items_burst = _default_burst(args.items_per_minute)
            secret = add_key(
                path,
                args.name,
                models=models,
                max_priority=args.max_priority,
                requests_per_second=args.rps,
                requests_burst=burst,
                items_per_minute=args.items_per_minute,
                items_burst=items_burst,
                max_concurrency=args.max_concurrency,
                weight=args.weight,
            )
            print(
                f"added key {args.name!r} to {path}. Its secret follows; it is shown only "
                "now and is not stored (the file keeps its SHA-256). Running servers load it "
                "on SIGHUP.",
                file=sys.stderr,
            )
            print(secret)
        elif args.command == "list":
            if not os.path.exists(path):
                print(f"infergate keys: no keys file at {path}", file=sys.stderr)
                return 1
            keys = list_keys(path)
            if keys:
                _print_table(keys)
            else:
                print(f"no keys in {path}", file=sys.stderr)
        else:
            removed = remove_key(path, args.name)
            print(f"removed key {removed.name!r} from {path}", file=sys.stderr)
    except KeysFileError as e:
        print(f"infergate keys: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
