"""`tlcache info`, `backbones`, `ls` and `gc`: what a store holds, what can embed, what is in the cache."""

from __future__ import annotations

import json

import click

from tlcache.cli.options import emit, human_size, json_option


@click.command()
@click.argument("store")
@json_option
def info(store, as_json) -> dict:
    """Show what STORE holds and how it was made.

    \b
    Example:
      tlcache info cache/minilm-<key>.h5
    """
    from tlcache.store import FeatureStore

    summary = FeatureStore(store).summary()
    if as_json:
        emit(summary, True, "")
        return summary
    width = max(len(k) for k in summary)
    for name, value in summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)  # a class or column name as its own letters
        click.echo(f"{name:<{width}}  {value}")
    return summary


@click.command()
@json_option
def backbones(as_json) -> None:
    """List the backbones, their modality and dim, and whether their weights are available offline here.

    \b
    Example:
      tlcache backbones --json
    """
    from tlcache.backbones import list_backbones

    infos = list_backbones()
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    rows = [("name", "modality", "dim", "offline", "weights", "note")] + [
        (i.name, i.modality, str(i.dim or "model's"), "yes" if i.offline else "no", i.weights, i.note) for i in infos
    ]
    _table(rows)


@click.command("ls")
@click.argument("folder", required=False)
@json_option
def ls(folder, as_json) -> None:
    """List the stores in FOLDER (default: the cache folder): key, backbone, features (image size, precision,
    layer, views where not the default), rows, size, state, last use, source.

    \b
    Example:
      tlcache ls
      tlcache ls cache/ --json
    """
    from tlcache.cache import list_stores

    entries = list_stores(folder)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    if not entries:  # an empty table would not say which folder was looked in
        click.echo(_nothing_listed(folder))
        return
    rows = [("key", "backbone", "features", "rows", "size", "state", "last used", "source")] + [
        (
            (e.key or "?")[:12],
            e.backbone or "?",
            e.features or "?",
            f"{e.rows_done}/{e.n_rows}" if e.state in ("partial", "running") else str(e.n_rows),
            human_size(e.size_bytes),
            e.state,
            e.last_used.replace("+00:00", "Z"),
            (e.source or e.path.name) + (f" ({e.n_rows} of its {e.part_of} items)" if e.part_of else ""),
        )
        for e in entries
    ]
    _table(rows)


@click.command()
@click.argument("folder", required=False)
@click.option("--unused-days", type=click.FloatRange(min=0), help="Also remove complete stores unused for this long.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option
def gc(folder, unused_days, dry_run, as_json) -> None:
    """Remove incomplete stores in FOLDER (default: the cache folder) that no embed is writing, the shard folders
    of Ray runs that are not running, and, with --unused-days, complete stores not written, hit or fitted on for
    that many days.

    \b
    Examples:
      tlcache gc --dry-run
      tlcache gc --unused-days 30
    """
    from tlcache.cache import collect_garbage

    removed = collect_garbage(folder, unused_days=unused_days, dry_run=dry_run)
    freed = sum(e.size_bytes for e in removed)
    verb = "would remove" if dry_run else "removed"
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "removed": [e.as_dict() for e in removed], "freed_bytes": freed}))
        return
    for entry in removed:
        click.echo(f"{verb} {entry.path} ({entry.state}, {human_size(entry.size_bytes)})")
    click.echo(f"{verb} {len(removed)} stores, {human_size(freed)}")


def _nothing_listed(folder: str | None) -> str:
    from tlcache.paths import default_cache_dir

    if folder is not None:
        return f"no stores in {folder}"
    return (
        f"no stores in {default_cache_dir()}, the default cache folder ($TLCACHE_HOME, else ~/.cache/tlcache); "
        "for stores that `tlcache embed --out FOLDER` wrote, run `tlcache ls FOLDER`"
    )


def _table(rows: list[tuple]) -> None:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
