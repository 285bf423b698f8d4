"""`export due-diligence` (the merger data room) and `export verify` (the acquirer's check)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli import logs
from cli.output import emit_json, json_option, progress_enabled, table
from cli.params import MOMENT, Choice, pass_ledger
from ledger.errors import ConfigurationError, InputError, IntegrityFailure


@click.group("export")
def export() -> None:
    """Verifiable exports for a merger's due diligence."""


@export.command("due-diligence")
@click.option("--acquirer", required=True, help="The prospective buyer receiving the export.")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder to create (must not exist, or be empty).",
)
@click.option("--as-of", "as_of", type=MOMENT, help="Only facts at or before this business time.")
@click.option(
    "--identified",
    is_flag=True,
    help="Include personal data (needs a transfer.initiated for the acquirer; never for "
    "erased customers). Default: pseudonymous.",
)
@click.option(
    "--format",
    "file_format",
    type=Choice(["jsonl", "csv", "parquet"]),
    default="jsonl",
    show_default=True,
    help="parquet needs the 'parquet' extra (pyarrow).",
)
@json_option
@pass_ledger
def due_diligence(
    ledger: Any,
    acquirer: str,
    out: Path,
    as_of: Any,
    identified: bool,
    file_format: str,
    as_json: bool,
) -> None:
    """Export every customer's consents, consent history, orders and disclosures for
    ACQUIRER's analysts, with summary figures and a signed manifest; recorded as a
    disclosure to the acquirer."""
    from ledger.exports import ExportRequest, export_due_diligence
    from ledger.persistence.export_store import customer_count

    request = ExportRequest(acquirer, out, as_of, identified, file_format)
    if progress_enabled():
        total = customer_count(ledger.database)
        with click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:
            result = export_due_diligence(ledger, request, progress=bar.update)
    else:
        result = export_due_diligence(ledger, request)
    logs.log.info(
        "export.done",
        export_id=result.export_id,
        customers=result.customers,
        identified=result.identified_customers,
        format=file_format,
    )
    if as_json:
        emit_json(result.to_json())
        return
    kind = "identified" if identified else "pseudonymous"
    click.echo(
        f"{kind} export {result.export_id} of {result.customers} customers for {acquirer} "
        f"in {result.folder}"
    )
    click.echo(f"recorded as disclosure {result.fact_id} (manifest {result.manifest_sha256})")
    click.echo(table([f.to_json() for f in result.files], ["path", "rows", "bytes", "sha256"]))


@export.command("verify")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--public-key",
    "public_key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The ledger's public key (signing.pub) obtained from the seller: pins the signer.",
)
@json_option
def verify(folder: Path, public_key: Path | None, as_json: bool) -> None:
    """Check an export FOLDER against its manifest, with no access to any database: every
    file's SHA-256 and size, no file added or removed, the manifest's and the ledger
    checkpoint's signatures. Exit 4 on any mismatch."""
    from ledger.manifest import verify_export_dir

    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    key = None
    if public_key is not None:
        from ledger.integrity import load_public_key

        key = public_key.read_bytes()
        try:
            load_public_key(key)  # refused here, as `verify` refuses it, not mid-check
        except ValueError as error:
            raise ConfigurationError(f"cannot read the public key {public_key}: {error}") from None
    report = verify_export_dir(folder, key)
    logs.log.info("export.verify", ok=report.ok, problems=len(report.problems))
    if as_json:
        emit_json(report.to_json())
    elif report.ok:
        pinned = "pinned" if report.key_pinned else "NOT pinned: compare it with the seller's"
        click.echo(
            f"ok: {report.files_checked} files match the manifest of export {report.export_id}, "
            f"signed by key {report.key_id} ({pinned})"
        )
    else:
        for problem in report.problems:
            click.echo(f"{problem.file}: {problem.message}", err=True)
    if not report.ok:
        raise IntegrityFailure(report.summary())


@export.command("list")
@json_option
@pass_ledger
def list_exports(ledger: Any, as_json: bool) -> None:
    """Every due-diligence export recorded: when, to whom, what, the manifest's hash."""
    from ledger.exports import recorded_exports

    rows = recorded_exports(ledger)
    if as_json:
        emit_json({"exports": rows})
        return
    columns = ["at", "export_id", "recipient", "customers", "identified", "categories"]
    click.echo(table(rows, columns, empty="(no exports)"))


@export.command("reidentify")
@click.argument("export_id")
@click.argument("pseudonym")
@json_option
@pass_ledger
def reidentify(ledger: Any, export_id: str, pseudonym: str, as_json: bool) -> None:
    """The customer behind PSEUDONYM in export EXPORT_ID (the seller's side: only this
    ledger holds the export's secret)."""
    from ledger.exports import reidentify as find

    ref = find(ledger, export_id, pseudonym)
    logs.log.info("export.reidentify", export_id=export_id, customer=logs.hashed(ref))
    if as_json:
        emit_json({"export_id": export_id, "pseudonym": pseudonym, "customer": ref})
    else:
        click.echo(ref)


commands = [export]
