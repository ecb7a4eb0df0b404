"""`hie empi`: offline dedupe of a CSV file, whole-index rebuild, per-region thresholds."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from hie.empi.dedupe import dedupe_csv
from hie.empi.matching import Thresholds
from hie.empi.models import RegionThresholds
from hie.platform.db import session_scope
from hie.tenants.models import Region


@click.group()
def empi() -> None:
    """Master patient index."""


@empi.command("dedupe")
@click.option("--input", "in_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def empi_dedupe(in_path: Path, out_path: Path) -> None:
    """Cluster a CSV of registrations offline with the EMPI's engine; OUT.csv is rec_id,person_id."""
    if not in_path.is_file():
        raise click.ClickException(f"input file {in_path} does not exist")
    try:
        report = dedupe_csv(in_path, out_path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{in_path}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot open {exc.filename or out_path}: {exc.strerror or exc}") from None
    for problem in report.malformed:
        click.echo(f"line {problem.line}: {problem.reason} (rec_id {problem.rec_id!r})", err=True)
    for problem in report.field_issues:
        click.echo(f"line {problem.line}: {problem.field}: {problem.reason}", err=True)
    click.echo(f"{report.rows} rows, {report.persons} persons, {len(report.malformed)} malformed rows, "
               f"{len(report.review_pairs)} possible matches for review, {report.seconds:.2f} s -> {out_path}")


@empi.command("rebuild")
@click.option("--retrain", is_flag=True, help="Estimate new weights by EM first.")
@click.option("--wait/--no-wait", default=True, help="With Redis: wait for the job and show its progress.")
def empi_rebuild(retrain: bool, wait: bool) -> None:
    """Re-run matching over the whole index: an RQ job with progress when Redis is set, inline otherwise."""
    from hie.empi.tasks import rebuild
    from hie.platform.cli import make_app

    app = make_app()
    queue = app.extensions["hie.queue"]
    if queue is None:
        with app.app_context():
            counts = rebuild(retrain, progress=lambda done, total: click.echo(f"{done}/{total} records"))
        click.echo(f"rebuild done: {counts}")
        return
    job = queue.enqueue("hie.empi.tasks.rebuild_job", retrain, job_timeout=6 * 3600)
    click.echo(f"rebuild queued as job {job.id}; run `hie worker` to process it")
    while wait and not job.is_finished:
        if job.is_failed:
            click.echo(f"rebuild failed: {job.latest_result().exc_string if job.latest_result() else ''}", err=True)
            sys.exit(1)
        job.refresh()
        progress = job.meta.get("progress")
        if progress:
            click.echo(f"{progress['done']}/{progress['total']} records")
        time.sleep(2)
    if job.is_finished:
        click.echo(f"rebuild done: {job.return_value()}")


@empi.command("thresholds")
@click.argument("region_code")
@click.option("--link", type=float, required=True, help="log2 odds at and above which records auto-link")
@click.option("--review", type=float, required=True, help="log2 odds at and above which a steward reviews")
def empi_thresholds(region_code: str, link: float, review: float) -> None:
    """Set a region's match thresholds."""
    from hie.platform.cli import make_app

    try:
        Thresholds(link=link, review=review)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    app = make_app()
    with session_scope(app.extensions["hie.engines"].platform) as session:
        if session.get(Region, region_code) is None:
            raise click.ClickException(f"region {region_code!r} does not exist")
        row = session.get(RegionThresholds, region_code) or RegionThresholds(region_code=region_code)
        row.link, row.review = link, review
        session.merge(row)
    click.echo(f"region {region_code}: link >= {link}, review >= {review}")


def register(main: click.Group) -> None:
    """Attach `hie empi` to the main command."""
    main.add_command(empi)

